"""Freed memory becomes batch, measured: L of N layers vs all N at one memory budget.

The budget is what the memory model says all N layers need for 16 sequences of the full
context (weights + activation reserve + 16 x per-sequence KV and exit state), so the
all-layers worker holds 16. Each configuration runs in its own process, under a saturating
load (2 x its capacity of requests, all at once), and reports:
- sequences served at once, measured (the most running in any step) beside the memory
  model's prediction;
- peak memory: the growth of the process's peak RSS (VmHWM) from before the model loads, on
  CPU; ``torch.cuda.max_memory_allocated`` on CUDA; beside the budget;
- tokens/s and TTFT/TPOT p50/p99 over the requests.

    python bench/memory_bench.py --model smollm2-135m --threads 1
    python bench/memory_bench.py --model helios-ee-tiny --context 1024 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPTS_FILE = Path(__file__).resolve().parent.parent / "worker/helios_worker/assets/prompts/in_domain.txt"
MIB = 1 << 20


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_one(args) -> dict:
    """One worker configuration in this process (the parent starts one process per configuration)."""
    import torch

    from helios_contracts.memory_model import MAX_NUM_SEQS
    from helios_worker.engine import Engine, EngineConfig
    from helios_worker.exit_plan import find_profile
    from helios_worker.loading import load_model
    from helios_worker.sampling import SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        Path("/proc/self/clear_refs").write_text("5")
    baseline = _kib("VmRSS") * 1024 if device.type == "cpu" else torch.cuda.memory_allocated()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    loaded = load_model(args.model, args.one, device=device, dtype=dtype)
    profile, _ = find_profile(loaded.ref.path, loaded.num_layers_total)
    config = EngineConfig(
        max_batch_size=MAX_NUM_SEQS,
        max_seq_len=args.context,
        memory_budget=args.budget,
        exit_layers="auto",
        exit_profile=profile,
    )
    engine = Engine(loaded, config)
    capacity = engine.num_slots
    text = [line for line in PROMPTS_FILE.read_text().splitlines() if line.strip()]
    prompts = [loaded.tokenizer(text[i % len(text)]).input_ids for i in range(2 * capacity)]
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
    engine.generate(prompts[:2], SamplingParams(max_new_tokens=2, ignore_eos=True))  # warm-up
    start = time.perf_counter()
    ids = [engine.add_request(p, params) for p in prompts]
    done, most_running = {}, 0
    while engine.has_unfinished():
        outputs, stats = engine.step()
        most_running = max(most_running, stats.num_running)
        done.update({o.request_id: o for o in outputs if o.finished})
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    outputs = [done[i] for i in ids]
    ttft = [o.first_token_time - o.arrival_time for o in outputs]
    tpot = [(o.finish_time - o.first_token_time) / max(1, len(o.token_ids) - 1) for o in outputs]
    peak = (_kib("VmHWM") * 1024 - baseline) if device.type == "cpu" else torch.cuda.max_memory_allocated() - baseline
    return {
        "layers": args.one,
        "capacity": capacity,
        "predicted": engine.memory_plan.max_num_seqs,
        "most_running": most_running,
        "peak_bytes": peak,
        "plan_bytes": engine.memory_plan.total_bytes,
        "tokens_per_second": sum(len(o.token_ids) for o in outputs) / elapsed,
        "ttft": (percentile(ttft, 0.5), percentile(ttft, 0.99)),
        "tpot": (percentile(tpot, 0.5), percentile(tpot, 0.99)),
        "mean_exit": statistics.mean(layer for o in outputs for layer in o.exit_layers),
    }


def budget_for(args) -> tuple[int, int]:
    """(budget, N): all N layers hold exactly ``--sequences`` sequences of ``--context`` tokens."""
    import torch

    from helios_contracts.memory_model import MAX_NUM_SEQS, plan_memory
    from helios_worker.loading import load_model

    dtype = getattr(torch, args.dtype) if args.dtype else None
    loaded = load_model(args.model, 1, device=args.device, dtype=dtype)
    n = loaded.num_layers_total
    plan = plan_memory(
        loaded.shape,
        n,
        None,
        itemsize=loaded.dtype.itemsize,
        max_seq_len=args.context,
        max_batch_size=MAX_NUM_SEQS,
        max_prefill_tokens=max(8192, args.context),
    )
    return plan.weight_bytes + plan.reserve_bytes + args.sequences * plan.bytes_per_sequence, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layers", type=int, default=None, help="L (default N/2)")
    parser.add_argument("--context", type=int, default=2048, help="tokens each sequence's slot holds")
    parser.add_argument("--sequences", type=int, default=16, help="sequences all N layers hold in the budget")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args)))
        return 0
    budget, n = budget_for(args)
    layers = args.layers or n // 2
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = {}
    for depth in (n, layers):
        command = [sys.executable, __file__, *forwarded, "--one", str(depth), "--budget", str(budget)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=3000)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        results[depth] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"command: python bench/memory_bench.py {' '.join(forwarded)}")
    print(f"machine: {os.cpu_count()} cores; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"budget: {budget / MIB:.1f} MiB (all {n} layers: {args.sequences} sequences of {args.context} tokens)\n")
    print(
        "| worker | seqs predicted | seqs at once (measured) | peak MiB (measured) | plan MiB | tok/s "
        "| TTFT p50/p99 ms | TPOT p50/p99 ms | mean exit |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for depth, r in results.items():
        name = f"all {n} layers, early exit" if depth == n else f"HELIOS L={depth}"
        print(
            f"| {name} | {r['predicted']} | {r['most_running']} | {r['peak_bytes'] / MIB:.1f} "
            f"| {r['plan_bytes'] / MIB:.1f} | {r['tokens_per_second']:.1f} "
            f"| {r['ttft'][0] * 1e3:.0f}/{r['ttft'][1] * 1e3:.0f} | {r['tpot'][0] * 1e3:.1f}/{r['tpot'][1] * 1e3:.1f} "
            f"| {r['mean_exit']:.2f} |"
        )
    full, part = results[n], results[layers]
    predicted = part["predicted"] / full["predicted"]
    measured = part["most_running"] / full["most_running"]
    print(
        f"\nbatch ratio L={layers} / N={n}: measured {measured:.2f}x, predicted {predicted:.2f}x "
        f"({measured / predicted:.2f} of predicted; target >= 0.95; the paper reports 3.7x on its models)"
    )
    print(
        f"throughput ratio: {part['tokens_per_second'] / full['tokens_per_second']:.2f}x (target >= 1.3x); "
        f"peak above budget: {max(r['peak_bytes'] - budget for r in results.values()) / MIB:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
