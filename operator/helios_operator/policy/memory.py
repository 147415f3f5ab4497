"""Memory model of greedy exit, as the policy predicts it: ``helios_contracts.memory_model``.

Loading L of N layers frees the weights and the KV cache of the other N - L layers; the
paper turns that memory into a larger batch. The worker sizes its cache with the same
module, so ``max_batch_size`` here is the number of sequences a worker with that budget
holds. Reports written before the model shape was recorded fall back to their byte counts.
"""

from __future__ import annotations

from helios_contracts.memory_model import (
    DEFAULT_MAX_PREFILL_TOKENS,
    DTYPE_BYTES,
    MAX_NUM_SEQS,
    MemoryModelError,
    plan_memory,
)
from helios_contracts.memory_model import weight_bytes as shape_weight_bytes
from helios_contracts.reports import EvaluationReport


def _itemsize(report: EvaluationReport) -> int | None:
    return DTYPE_BYTES.get(report.dtype) if report.shape is not None and report.dtype else None


def weight_bytes(report: EvaluationReport, layers: int) -> int:
    """Weight bytes with the first ``layers`` decoder layers loaded (shared parts always are)."""
    itemsize = _itemsize(report)
    if itemsize is not None:
        return shape_weight_bytes(report.shape, layers, itemsize)
    return report.bytes_shared + layers * report.bytes_per_layer


def kv_bytes_per_sequence(report: EvaluationReport, layers: int, context_tokens: int) -> int:
    """KV cache of one full-context sequence through ``layers`` layers."""
    return report.kv_bytes_per_token_per_layer * layers * context_tokens


def max_batch_size(report: EvaluationReport, layers: int, budget: int | None, context_tokens: int) -> int | None:
    """Sequences a worker with ``budget`` bytes holds at ``layers`` layers (the worker's own sizing).

    0 when not even one fits; None when it cannot be known (no budget given, or a report
    without sizes, which would make any batch "fit").
    """
    if budget is None:
        return None
    itemsize = _itemsize(report)
    if itemsize is not None:
        try:
            plan = plan_memory(
                report.shape,
                layers,
                budget,
                itemsize=itemsize,
                max_seq_len=context_tokens,
                max_batch_size=MAX_NUM_SEQS,
                max_prefill_tokens=max(DEFAULT_MAX_PREFILL_TOKENS, context_tokens),
            )
        except MemoryModelError:
            return 0
        return plan.max_num_seqs
    per_sequence = kv_bytes_per_sequence(report, layers, context_tokens)
    if per_sequence <= 0:
        return None
    return max(0, (budget - weight_bytes(report, layers)) // per_sequence)
