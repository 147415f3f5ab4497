"""What one decoder layer costs at batch 1, against the engine's fixed cost per layer.

A model whose decode step is dominated by per-layer fixed cost (kernel launches, Python, the
cache bookkeeping) says little about early exit on real models: skipping its layers saves
overhead, not arithmetic. This measures both, in one run, with the engine's own decode loop:

* the model's cost per layer: the slope of the decode time per token (TPOT) against the number
  of loaded layers (least squares over several layer counts, all exits off);
* the fixed cost per layer: the same slope for a *null* copy of the model's architecture (same
  layer count, heads and vocabulary, width 8 per head and an MLP of 16), random weights written
  to a temporary directory and loaded through the same loading path, so its layers run the same
  operations on almost no data.

    python bench/layer_cost.py --model helios-ee-small --threads 1

The ratio is model slope / null slope (the issue asks >= 3x for helios-ee-small).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from helios_worker.engine import Engine, EngineConfig
from helios_worker.loading import load_model
from helios_worker.sampling import SamplingParams

PROMPT = "count from 41 : 41 42 43"


def tpot(ref: str, layers: int, new_tokens: int, repeats: int) -> float:
    """Median decode seconds per token at batch 1 with ``layers`` loaded and no exits."""
    loaded = load_model(ref, layers)
    ids = loaded.tokenizer(PROMPT).input_ids
    config = EngineConfig(early_exit=False, max_batch_size=1, max_seq_len=len(ids) + new_tokens + 1)
    engine = Engine(loaded, config)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    engine.generate([ids], SamplingParams(max_new_tokens=2, ignore_eos=True))  # warm-up
    times = []
    for _ in range(repeats):
        engine.add_request(ids, params)
        first = None
        while engine.has_unfinished():
            engine.step()
            if first is None:
                first = time.perf_counter()  # after the prefill step
        times.append((time.perf_counter() - first) / (new_tokens - 1))
    return statistics.median(times)


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of seconds against layers."""
    mean_x = statistics.mean(x for x, _ in points)
    mean_y = statistics.mean(y for _, y in points)
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return num / sum((x - mean_x) ** 2 for x, _ in points)


def null_copy(ref: str, out: Path) -> str:
    """The same architecture with width 8 per head: the engine's fixed per-layer work, nearly no data."""
    from transformers import AutoConfig, AutoModelForCausalLM

    loaded = load_model(ref, 1)
    config = AutoConfig.from_pretrained(loaded.ref.path)
    heads = config.num_attention_heads
    config.hidden_size, config.intermediate_size, config.head_dim = 8 * heads, 16, 8
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return str(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="helios-ee-small")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = load_model(args.model, 1).num_layers_total
    counts = sorted({1, max(1, n // 4), max(1, n // 2), max(1, 3 * n // 4), n})
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print("command: python " + " ".join(sys.argv))
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    with tempfile.TemporaryDirectory() as tmp:
        null = null_copy(args.model, Path(tmp))
        rows = []
        for name, ref in ((args.model, args.model), ("null copy", null)):
            points = [(layers, tpot(ref, layers, args.new_tokens, args.repeats)) for layers in counts]
            rows.append((name, points, slope(points)))
    print(f"\nbatch 1, {args.new_tokens} new tokens, median of {args.repeats}, no exits\n")
    print("| model | " + " | ".join(f"TPOT ms at L={c}" for c in counts) + " | ms per layer |")
    print("|---|" + "---|" * (len(counts) + 1))
    for name, points, per_layer in rows:
        cells = " | ".join(f"{t * 1e3:.2f}" for _, t in points)
        print(f"| {name} | {cells} | {per_layer * 1e3:.3f} |")
    ratio = rows[0][2] / rows[1][2]
    print(f"\none {args.model} layer = {ratio:.1f}x the engine's fixed per-layer cost (target >= 3x)")
    print("load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
