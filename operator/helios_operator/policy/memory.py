"""Memory model of greedy exit: weights of the first L layers plus the KV cache of L layers.

Loading L of N layers frees the weights and the KV cache of the other N - L layers; the
paper turns that memory into a larger batch. One batch slot holds a full context.
"""

from __future__ import annotations

from helios_operator.reports import EvaluationReport


def weight_bytes(report: EvaluationReport, layers: int) -> int:
    """Weight bytes with the first ``layers`` decoder layers loaded (shared parts always are)."""
    return report.bytes_shared + layers * report.bytes_per_layer


def kv_bytes_per_sequence(report: EvaluationReport, layers: int, context_tokens: int) -> int:
    """KV cache of one full-context sequence through ``layers`` layers."""
    return report.kv_bytes_per_token_per_layer * layers * context_tokens


def max_batch_size(report: EvaluationReport, layers: int, budget: int | None, context_tokens: int) -> int | None:
    """Sequences that fit beside the weights: floor((budget - weights) / KV per sequence).

    0 when the weights alone do not fit; None when it cannot be known (no budget given, or a
    report without KV size, which would make any batch "fit").
    """
    per_sequence = kv_bytes_per_sequence(report, layers, context_tokens)
    if budget is None or per_sequence <= 0:
        return None
    free = budget - weight_bytes(report, layers)
    return max(0, free // per_sequence)
