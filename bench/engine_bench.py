"""Engine benchmark: HF generate vs our engine, full depth vs early exit vs HELIOS (L layers).

Runs in one process on the same prompts and prints a table of ratios:
  (a) hf-generate      HF `generate`, all layers, greedy (HF's own loading and modules)
  (p) layerskip-L      HF `generate(assistant_early_exit=L)`: LayerSkip self-speculation, lossless (batch 1)
  (b) full             our engine, all layers, no exit tests
  (c) ee-<gate>        our engine, all layers loaded, early exits (the paper's EE-LLM baseline)
  (d) helios-L-<gate>  our engine, only L layers loaded, early exits + greedy exit at L

    python bench/engine_bench.py --model helios-ee-tiny --batch-sizes 1 16 --layers 4
    python bench/engine_bench.py --model smollm2-135m --layers 15 --exit-layers every:5 --device cuda

Exit layers default to ``auto``: chosen from the model's exit profile
(``helios_exit_profile.json`` in its directory, written by ``helios evaluate --json``); a model
without one gets no intermediate exits. ``peak MiB`` is measured: on CPU the growth of the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs) during a timed run;
on CUDA ``torch.cuda.max_memory_allocated`` during it, both above what was resident before
(weights, and the KV cache the engine allocated up front, are resident before).
Agreement is per token and teacher-forced against full depth.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from helios_worker.engine import Engine, EngineConfig
from helios_worker.exit_plan import PROFILE_FILE, parse_exit_layers, read_profile
from helios_worker.loading import LoadedModel, load_model
from helios_worker.sampling import SamplingParams
from helios_worker.scoring import sequence_logits
from helios_worker.server.state import load_exits

PROMPTS_FILE = Path(__file__).resolve().parent.parent / "worker/helios_worker/assets/prompts/in_domain.txt"
MIB = 1 << 20


@dataclass
class Run:
    name: str
    layers: int
    exits: str
    batch: int
    tokens_per_second: float
    ttft: float
    tpot: float
    peak_bytes: int | None
    mean_exit_layer: float
    heads_per_token: float | None
    token_ids: list[list[int]]
    agreement: float | None = None


# --- measured memory --------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak memory above the starting point while the block runs (None where it cannot be read)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                self._start = _status_kib("VmRSS") * 1024
            except OSError:
                self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
        elif self._start is not None:
            self.peak_bytes = _status_kib("VmHWM") * 1024 - self._start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- the systems --------------------------------------------------------------------------
# Each system is prepared once (warm-up included) and then timed in interleaved rounds: every
# round runs every system once, so a neighbour's burst on a shared machine hits all of them,
# and each system's fastest round counts. The order rotates from round to round: on this
# CPU whichever system runs first in a round was measured up to 10% faster than the same
# configuration run later, so with repeats >= systems every system gets every position.


@dataclass
class Timed:
    elapsed: float
    token_ids: list[list[int]]
    ttft: float
    tpot: float
    exit_layers: list[int]
    num_head_rows: int


class HFSystem:
    """HF generate with left padding (how a batch is fed to it); LayerSkip self-speculation with ``early_exit``."""

    def __init__(
        self, model, batches: list[list[list[int]]], new_tokens: int, pad: int, early_exit: int | None = None
    ) -> None:
        self.model, self.new_tokens, self.early_exit = model, new_tokens, early_exit
        device = model.device
        self.inputs = []
        for prompts in batches:
            width = max(map(len, prompts))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
            self.inputs.append((width, ids, mask))
        self.kwargs = dict(do_sample=False, pad_token_id=pad)
        if early_exit is not None:
            self.kwargs["assistant_early_exit"] = early_exit
        self.name = "a hf-generate" if early_exit is None else f"p layerskip-L{early_exit}"
        self.layers, self.exits = model.config.num_hidden_layers, "-" if early_exit is None else f"draft {early_exit}"
        _, ids, mask = self.inputs[0]
        model.generate(ids, attention_mask=mask, max_new_tokens=2, **self.kwargs)  # warm-up
        sync(device)
        start = time.perf_counter()
        model.generate(ids, attention_mask=mask, max_new_tokens=1, **self.kwargs)
        sync(device)
        self.ttft = time.perf_counter() - start

    def run(self) -> Timed:
        start = time.perf_counter()
        # min_new_tokens: like our runs' ignore_eos, every row makes exactly new_tokens tokens
        n, tokens = self.new_tokens, []
        for width, ids, mask in self.inputs:
            out = self.model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **self.kwargs)
            tokens += [row[width:].tolist() for row in out]
        sync(self.model.device)
        elapsed = time.perf_counter() - start
        exits = [self.layers] * sum(map(len, tokens))
        steps = len(self.inputs) * max(1, n - 1)
        return Timed(elapsed, tokens, self.ttft, (elapsed - len(self.inputs) * self.ttft) / steps, exits, 0)


class EngineSystem:
    def __init__(
        self, loaded: LoadedModel, name: str, batches: list[list[list[int]]], new_tokens: int, config, exits=None
    ) -> None:
        self.loaded, self.name, self.batches = loaded, name, batches
        self.params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        self.engine = Engine(loaded, config, exits=exits)
        self.engine.generate(batches[0][:1], SamplingParams(max_new_tokens=2, ignore_eos=True))  # warm-up
        self.layers = self.engine.active_layers
        self.exits = ",".join(map(str, self.engine.exit_layers_for(len(batches[0]), 64)[:-1])) or "L only"

    def run(self) -> Timed:
        engine, heads, done, ids = self.engine, 0, {}, []
        start = time.perf_counter()
        for prompts in self.batches:  # one batch after another, each decoded to its end
            ids += [engine.add_request(p, self.params) for p in prompts]
            while engine.has_unfinished():
                outputs, stats = engine.step()
                heads += stats.num_head_rows
                done.update({o.request_id: o for o in outputs if o.finished})
        sync(self.loaded.device)
        elapsed = time.perf_counter() - start
        outputs = [done[i] for i in ids]
        ttft = statistics.mean(o.first_token_time - o.arrival_time for o in outputs)
        tpot = statistics.mean((o.finish_time - o.first_token_time) / max(1, len(o.token_ids) - 1) for o in outputs)
        exits = [layer for o in outputs for layer in o.exit_layers]
        return Timed(elapsed, [o.token_ids for o in outputs], ttft, tpot, exits, heads)


def time_systems(systems: list, repeats: int, device: torch.device) -> list[Run]:
    best: dict[int, Timed] = {}
    peaks: dict[int, int | None] = {}
    for round_number in range(repeats):
        shift = round_number % len(systems)
        for number in [*range(shift, len(systems)), *range(shift)]:
            system = systems[number]
            with PeakMemory(device) as memory:
                timed = system.run()
            if memory.peak_bytes is not None:
                peaks[number] = max(peaks.get(number) or 0, memory.peak_bytes)
            if number not in best or timed.elapsed < best[number].elapsed:
                best[number] = timed
    runs = []
    for number, system in enumerate(systems):
        t = best[number]
        num_tokens = len(t.exit_layers)
        heads = t.num_head_rows / num_tokens if isinstance(system, EngineSystem) else None
        runs.append(
            Run(
                system.name,
                system.layers,
                system.exits,
                len(t.token_ids),
                num_tokens / t.elapsed,
                t.ttft,
                t.tpot,
                peaks.get(number),
                statistics.mean(t.exit_layers),
                heads,
                t.token_ids,
            )
        )
    return runs


def agreement(full: LoadedModel, prompts: list[list[int]], tokens: list[list[int]]) -> float:
    """Per-token agreement with full depth, teacher-forced: the share of emitted tokens equal to the
    full model's greedy choice after the same prefix (one divergence does not count the rest)."""
    same = total = 0
    for prompt, row in zip(prompts, tokens, strict=True):
        choices = sequence_logits(full, prompt + row)[len(prompt) - 1 : -1].argmax(-1).tolist()
        same += sum(a == b for a, b in zip(row, choices, strict=True))
        total += len(row)
    return same / total


def exit_config(spec: str, layers: int) -> tuple[int, ...] | str:
    """``auto`` | ``none`` | ``all`` | ``every:K`` | ``4,6``."""
    if spec.startswith("every:"):
        every = int(spec.split(":", 1)[1])
        return tuple(range(every, layers, every))
    return parse_exit_layers(spec)


def bench_model(ref: str, args) -> list[tuple[str, list[Run]]]:
    from transformers import AutoModelForCausalLM

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    full = load_model(ref, device=device, dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(full.ref.path, dtype=full.dtype).to(device).eval()
    pad = full.tokenizer.pad_token_id if full.tokenizer.pad_token_id is not None else 0
    profile_path = full.ref.path / PROFILE_FILE
    profile = read_profile(profile_path) if profile_path.exists() else None
    n = full.num_layers_total
    sweep = sorted({layer for layer in (args.layers or [n // 2]) if 1 <= layer < n})
    text = [line for line in (args.prompts or PROMPTS_FILE).read_text().splitlines() if line.strip()]
    tables = []
    truncated = {layers: load_model(ref, layers, device=device, dtype=dtype) for layers in sweep}
    for batch in args.batch_sizes:
        prompts = [full.tokenizer(text[i % len(text)]).input_ids for i in range(batch * args.batches)]
        batches = [prompts[i : i + batch] for i in range(0, len(prompts), batch)]
        seq_len = max(map(len, prompts)) + args.new_tokens + 1
        base = dict(max_batch_size=batch, max_seq_len=seq_len, exit_threshold=args.threshold, exit_profile=profile)
        systems: list = [HFSystem(hf, batches, args.new_tokens, pad)]
        if batch == 1:
            systems += [HFSystem(hf, batches, args.new_tokens, pad, early_exit=layers) for layers in sweep]
        systems.append(EngineSystem(full, "b full", batches, args.new_tokens, EngineConfig(early_exit=False, **base)))
        for gate in args.gates:
            config = EngineConfig(exit_layers=exit_config(args.exit_layers, n), exit_gate=gate, **base)
            systems.append(EngineSystem(full, f"c ee-{gate}", batches, args.new_tokens, config))
        if args.exits:  # calibrated exits: translators, trained gates, and their own exit profile
            config = EngineConfig(exit_layers=exit_config(args.exit_layers, n), **{**base, "exit_profile": None})
            exits = load_exits(full, str(args.exits))
            systems.append(EngineSystem(full, "c ee-calibrated", batches, args.new_tokens, config, exits))
        for layers, model in truncated.items():
            for gate in args.gates:
                config = EngineConfig(exit_layers=exit_config(args.exit_layers, layers), exit_gate=gate, **base)
                systems.append(EngineSystem(model, f"d helios-L{layers}-{gate}", batches, args.new_tokens, config))
            if args.exits:
                config = EngineConfig(
                    exit_layers=exit_config(args.exit_layers, layers), **{**base, "exit_profile": None}
                )
                name = f"d helios-L{layers}-calibrated"
                systems.append(
                    EngineSystem(model, name, batches, args.new_tokens, config, load_exits(model, str(args.exits)))
                )
        runs = time_systems(systems, args.repeats, device)
        for run in runs:
            run.agreement = agreement(full, prompts, run.token_ids)
        tables.append((f"{ref}, batch {batch}", runs))
    return tables


def format_table(title: str, runs: list[Run], num_layers: int) -> str:
    a = runs[0]
    b = next(r for r in runs if r.name.startswith("b "))
    lines = [
        f"### {title}",
        "",
        "| config | layers | exit tests | tok/s | x(a) | x(b) | TTFT ms | TPOT ms | peak MiB | mean exit "
        "| heads/token | agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        peak_text = f"{r.peak_bytes / MIB:.1f}" if r.peak_bytes is not None else "-"
        heads = f"{r.heads_per_token:.2f}" if r.heads_per_token is not None else "-"
        lines.append(
            f"| {r.name} | {r.layers} | {r.exits} | {r.tokens_per_second:.1f} "
            f"| {r.tokens_per_second / a.tokens_per_second:.2f} | {r.tokens_per_second / b.tokens_per_second:.2f} "
            f"| {r.ttft * 1e3:.1f} | {r.tpot * 1e3:.1f} | {peak_text} | {r.mean_exit_layer:.2f} | {heads} "
            f"| {r.agreement:.3f} |"
        )
    lines += ["", "Targets (issue 'Early exit must pay'):"]
    lines.append(f"- (b) >= 1.1x (a): {b.tokens_per_second / a.tokens_per_second:.2f}x")
    for r in runs:
        if r.name.startswith("c "):
            lines.append(f"- ({r.name}) >= 1.0x (b): {r.tokens_per_second / b.tokens_per_second:.2f}x")
        if r.name.startswith("d "):
            want = 0.8 * num_layers / r.layers
            lines.append(
                f"- ({r.name}) >= 0.8 x N/L = {want:.2f}x (b): {r.tokens_per_second / b.tokens_per_second:.2f}x"
            )
    return "\n".join(lines)


def machine(device: str) -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="model refs (repeatable)")
    parser.add_argument("--layers", type=int, nargs="*", help="L values for HELIOS (default N/2)")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--exit-layers", default="auto", help="auto | none | all | every:K | 4,6")
    parser.add_argument("--gates", nargs="*", default=["none", "saturation"], help="exit gates to compare")
    parser.add_argument("--exits", type=Path, default=None, help="calibrated exits (helios calibrate) to add rows for")
    parser.add_argument("--prompts", type=Path, default=None)
    parser.add_argument(
        "--batches", type=int, default=1, help="batches of distinct prompts per timed run, decoded one after another"
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds; each config's fastest counts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="e.g. bfloat16 (default float32 on CPU, bf16 on CUDA)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"machine: {machine(args.device)}")
    print(f"command: python bench/engine_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"load average at start: {load_average()}")
    print(
        f"settings: best of {args.repeats} runs of {args.batches} batch(es), {args.new_tokens} new tokens, "
        f"threshold {args.threshold}, "
        f"exit layers {args.exit_layers}, gates {', '.join(args.gates)}\n"
    )
    with torch.inference_mode():
        for ref in args.model or ["helios-ee-tiny"]:
            for title, runs in bench_model(ref, args):
                print(format_table(title, runs, runs[0].layers), "\n", flush=True)
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
