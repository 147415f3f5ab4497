"""Where the worker runs and in what: device, dtype and memory budget, resolved from ``auto``.

- device ``auto``: ``cuda`` when a GPU is visible, else ``cpu``.
- dtype ``auto``: bfloat16 on CUDA where supported (float16 otherwise); float32 on the CPU,
  where bf16 matmuls are slow on most processors.
- memory budget ``auto``: on CUDA the free device memory x ``gpu_memory_utilization`` (as
  vLLM does), read before the weights load; on the CPU ``CPU_MEMORY_SHARE`` of the memory
  this process may use (the cgroup limit, else the host's RAM).
"""

from __future__ import annotations

from pathlib import Path

import torch

from helios_worker.byte_sizes import parse_bytes

CPU_MEMORY_SHARE = 0.5
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def usable_host_memory() -> int:
    """The cgroup's memory limit where one is set, else the host's total RAM."""
    import psutil

    total = psutil.virtual_memory().total
    for path in CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(total, int(text))
    return total


def resolve_budget(text: str | None, device: torch.device, gpu_memory_utilization: float) -> int | None:
    """Bytes the worker may hold for weights, KV cache and activations (None: no budget)."""
    if text is None or text == "none":
        return None
    if text != "auto":
        return parse_bytes(text)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * gpu_memory_utilization)
    return int(usable_host_memory() * CPU_MEMORY_SHARE)
