"""Engine benchmark: HF generate vs our engine, full depth vs early exit vs HELIOS (L layers).

Runs in one process on the same prompts and prints a table of ratios:
  (a) hf-generate      HF `generate`, all layers, greedy
  (b) full             our engine, all layers, no exit tests
  (c) ee-all-layers    our engine, all layers loaded, early exits (the paper's EE-LLM baseline)
  (d) helios-L         our engine, only L layers loaded, early exits + greedy exit at L

    python bench/engine_bench.py --model helios-ee-tiny --batch-sizes 1 16
    python bench/engine_bench.py --model smollm2-135m --layers 12 18 24 --exit-every 3 --device cuda --dtype bfloat16

Memory is weights + KV cache as allocated (exact bytes, not RSS); on CUDA the measured
peak (`torch.cuda.max_memory_allocated`) is shown too. Max batch = how many sequences of
--context tokens fit in --memory-budget beside the weights of L layers.
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
from helios_worker.loading import LoadedModel, load_model
from helios_worker.sampling import SamplingParams

PROMPTS_FILE = Path(__file__).resolve().parent.parent / "worker/helios_worker/assets/prompts/in_domain.txt"
FALLBACK_PROMPTS = [
    "The Kubernetes scheduler decides",
    "def merge_sorted(a, b):",
    "The history of the printing press",
    "Explain how a hash table handles collisions.",
    "In Python, a generator is",
    "The main causes of inflation are",
    "Write a haiku about autumn leaves.",
    "A binary search works by",
]


@dataclass
class Run:
    name: str
    layers: int
    batch: int
    tokens_per_second: float
    ttft: float
    tpot: float
    memory_bytes: int
    measured_peak: int | None
    max_batch: int
    mean_exit_layer: float
    agreement: float | None
    token_ids: list[list[int]]


def load_prompts(path: Path | None, count: int) -> list[str]:
    source = path or PROMPTS_FILE
    prompts = [line for line in source.read_text().splitlines() if line.strip()] if source.exists() else []
    prompts = prompts or FALLBACK_PROMPTS
    return [prompts[i % len(prompts)] for i in range(count)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else None


def max_batch(loaded: LoadedModel, layers: int, kv_bytes_per_token_per_layer: int, budget: int, context: int) -> int:
    free = budget - loaded.weight_bytes(layers)
    return max(0, free // (kv_bytes_per_token_per_layer * layers * context))


def run_hf(loaded: LoadedModel, prompts: list[list[int]], new_tokens: int, args) -> Run:
    """HF generate with left padding (how a batch is fed to it)."""
    model, device = loaded.model, loaded.device
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    kwargs = dict(attention_mask=mask, do_sample=False, pad_token_id=pad)
    model.generate(ids, max_new_tokens=2, **kwargs)  # warm-up
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=1, **kwargs)
    sync(device)
    ttft = time.perf_counter() - start
    elapsed = float("inf")
    for _ in range(args.repeats):  # best of N: the machine may be shared
        start = time.perf_counter()
        # min_new_tokens: like our runs' ignore_eos, every row makes exactly new_tokens tokens
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        sync(device)
        elapsed = min(elapsed, time.perf_counter() - start)
    tokens = [row[width:].tolist() for row in out]
    n = loaded.num_layers_total
    return Run(
        "a hf-generate", n, len(prompts), len(prompts) * new_tokens / elapsed, ttft,
        (elapsed - ttft) / max(1, new_tokens - 1), 0, peak(device), 0, float(n), None, tokens,
    )  # fmt: skip


def run_engine(
    loaded: LoadedModel, name: str, prompts: list[list[int]], new_tokens: int, config: EngineConfig, args
) -> tuple[Run, Engine]:
    device = loaded.device
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    engine = Engine(loaded, config)
    engine.generate(prompts[:1], SamplingParams(max_new_tokens=2, ignore_eos=True))  # warm-up
    reset_peak(device)
    sync(device)
    elapsed = float("inf")
    for _ in range(args.repeats):  # best of N: the machine may be shared
        start = time.perf_counter()
        candidate = engine.generate(prompts, params)
        sync(device)
        if time.perf_counter() - start < elapsed:
            elapsed, outputs = time.perf_counter() - start, candidate
    ttfts = [o.first_token_time - o.arrival_time for o in outputs]
    tpots = [(o.finish_time - o.first_token_time) / max(1, len(o.token_ids) - 1) for o in outputs]
    exits = [layer for o in outputs for layer in o.exit_layers]
    kv_layer = engine.cache.bytes_per_token // max(1, engine.cache.num_layers)
    layers = engine.active_layers
    memory = loaded.weight_bytes(layers) + kv_layer * layers * len(prompts) * args.context
    run = Run(
        name, layers, len(prompts), len(prompts) * new_tokens / elapsed, statistics.mean(ttfts),
        statistics.mean(tpots), memory, peak(device),
        max_batch(loaded, layers, kv_layer, args.memory_budget, args.context), statistics.mean(exits), None,
        [o.token_ids for o in outputs],
    )  # fmt: skip
    return run, engine


def agreement(full: LoadedModel, prompts: list[list[int]], tokens: list[list[int]]) -> float:
    """Per-token agreement with full depth, teacher-forced: the share of emitted tokens equal to the
    full model's greedy choice after the same prefix (one divergence does not count the rest)."""
    same = total = 0
    for prompt, row in zip(prompts, tokens, strict=True):
        ids = torch.tensor([prompt + row], device=full.device)
        choices = full.model(ids).logits[0, len(prompt) - 1 : -1].argmax(-1).tolist()
        same += sum(a == b for a, b in zip(row, choices, strict=True))
        total += len(row)
    return same / total


def exit_layers_for(layers: int, every: int) -> tuple[int, ...]:
    return tuple(range(every, layers + 1, every))


def bench_model(ref: str, args) -> list[tuple[str, list[Run]]]:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    full = load_model(ref, device=device, dtype=dtype)
    n = full.num_layers_total
    sweep = sorted({layer for layer in (args.layers or [max(1, n // 4), n // 2, (3 * n) // 4]) if 1 <= layer < n})
    tables = []
    for batch in args.batch_sizes:
        text = load_prompts(args.prompts, batch)
        prompts = [full.tokenizer(p).input_ids for p in text]
        seq_len = max(map(len, prompts)) + args.new_tokens + 1
        base = dict(max_batch_size=batch, max_seq_len=seq_len, exit_threshold=args.threshold)
        runs = [run_hf(full, prompts, args.new_tokens, args)]
        b, _ = run_engine(full, "b full", prompts, args.new_tokens, EngineConfig(early_exit=False, **base), args)
        runs.append(b)
        ee_config = EngineConfig(exit_layers=exit_layers_for(n, args.exit_every), **base)
        runs.append(run_engine(full, "c ee-all-layers", prompts, args.new_tokens, ee_config, args)[0])
        for layers in sweep:
            truncated = load_model(ref, layers, device=device, dtype=dtype)
            config = EngineConfig(exit_layers=exit_layers_for(layers, args.exit_every), **base)
            runs.append(run_engine(truncated, f"d helios-L{layers}", prompts, args.new_tokens, config, args)[0])
            del truncated
            gc.collect()
        for run in runs:
            run.agreement = agreement(full, prompts, run.token_ids)
        tables.append((f"{ref}, batch {batch}", runs))
    return tables


def format_table(title: str, runs: list[Run]) -> str:
    a = runs[0]
    c = next(r for r in runs if r.name.startswith("c "))
    mib = 1 << 20
    lines = [
        f"### {title}",
        "",
        "| config | layers | tok/s | x(a) | x(c) | TTFT ms | TPOT ms | mem MiB | peak MiB | max batch | mean exit "
        "| agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        peak_text = f"{r.measured_peak / mib:.0f}" if r.measured_peak else "-"
        mem_text = f"{r.memory_bytes / mib:.0f}" if r.memory_bytes else "-"
        lines.append(
            f"| {r.name} | {r.layers} | {r.tokens_per_second:.1f} | {r.tokens_per_second / a.tokens_per_second:.2f} "
            f"| {r.tokens_per_second / c.tokens_per_second:.2f} | {r.ttft * 1e3:.1f} | {r.tpot * 1e3:.1f} "
            f"| {mem_text} | {peak_text} | {r.max_batch or '-'} | {r.mean_exit_layer:.2f} | {r.agreement:.3f} |"
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="model refs (repeatable)")
    parser.add_argument("--layers", type=int, nargs="*", help="L values for HELIOS (default N/4, N/2, 3N/4)")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--exit-every", type=int, default=1, help="exit test every k layers")
    parser.add_argument("--prompts", type=Path, default=None)
    parser.add_argument("--context", type=int, default=2048, help="tokens per sequence for max-batch")
    parser.add_argument("--memory-budget", type=lambda s: int(float(s) * (1 << 30)), default=8 << 30, help="GiB")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per config; the fastest counts")
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
    print(
        f"settings: best of {args.repeats} runs, {args.new_tokens} new tokens, threshold {args.threshold}, "
        f"exit test every {args.exit_every} layer(s), "
        f"memory budget {args.memory_budget / (1 << 30):.0f} GiB, context {args.context}\n"
    )
    with torch.inference_mode():
        for ref in args.model or ["helios-ee-tiny"]:
            for title, runs in bench_model(ref, args):
                print(format_table(title, runs), "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
