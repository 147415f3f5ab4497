"""Hand-built EvaluationReports for policy tests: curves derived from an exit histogram."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from helios_contracts.reports import EvaluationReport
from helios_operator.spec import HeliosDeploymentSpec

MB = 1_000_000


def ramp(start: float, end: float, n: int) -> list[float]:
    """n values from start to end, evenly spaced."""
    if n == 1:
        return [end]
    return [start + (end - start) * i / (n - 1) for i in range(n)]


def make_report(
    model: str = "alpha",
    *,
    exit_histogram: Sequence[int] = (50, 20, 10, 8, 5, 4, 2, 1),
    greedy_agreement: Sequence[float] | None = None,
    num_unconfident: int = 0,
    tokens_per_second: float = 100.0,
    time_per_output_token_seconds: float | None = None,
    bytes_per_layer: int = 100 * MB,
    bytes_shared: int = 50 * MB,
    kv_bytes_per_token_per_layer: int = 1000,
    energy_per_token_joules: float | None = None,
    tokens_per_count: int = 1000,
    **overrides: Any,
) -> EvaluationReport:
    """A report whose breach and mean-exit curves follow from ``exit_histogram``.

    ``exit_histogram[l-1]`` counts tokens whose first confident layer is l; the last entry
    also holds the ``num_unconfident`` tokens never confident. Greedy agreement defaults to
    a ramp from 0.90 to 1.00. Any EvaluationReport field can be overridden.

    Each count stands for ``tokens_per_count`` evaluation tokens (the rates do not change):
    with the default the 95% bounds lie within about 0.002 of the rates, so tests about
    something else read as if on point estimates; 1 makes a histogram-sized evaluation.
    """
    if tokens_per_count < 1:
        raise ValueError("tokens_per_count must be >= 1")
    exit_histogram = [count * tokens_per_count for count in exit_histogram]
    num_unconfident *= tokens_per_count
    n = len(exit_histogram)
    total = sum(exit_histogram)
    breach_rate = [sum(exit_histogram[layers:]) / total for layers in range(1, n)] + [num_unconfident / total]
    mean_exit = [
        sum(min(exit_layer, layers) * count for exit_layer, count in enumerate(exit_histogram, start=1)) / total
        for layers in range(1, n + 1)
    ]
    agreement = list(greedy_agreement) if greedy_agreement is not None else ramp(0.90, 1.00, n)
    fields: dict[str, Any] = {
        "model": model,
        "model_ref": f"test/{model}",
        "architecture": "llama",
        "num_layers_total": n,
        "exit_threshold": 0.8,
        "num_prompts": 5,
        "num_tokens": total,
        "exit_layer_histogram": list(exit_histogram),
        "agreement_by_layer": agreement,
        "confident_fraction_by_layer": [sum(exit_histogram[:layers]) / total for layers in range(1, n + 1)],
        "greedy_agreement_by_layer": agreement,
        "breach_rate_by_layer": breach_rate,
        "mean_exit_layer_by_layer": mean_exit,
        "tokens_per_second": tokens_per_second,
        "time_per_output_token_seconds": time_per_output_token_seconds or 1 / tokens_per_second,
        "time_to_first_token_seconds": 0.05,
        "peak_memory_bytes": bytes_shared + n * bytes_per_layer,
        "bytes_per_layer": bytes_per_layer,
        "bytes_shared": bytes_shared,
        "kv_bytes_per_token_per_layer": kv_bytes_per_token_per_layer,
        "energy_per_token_joules": energy_per_token_joules,
    }
    fields.update(overrides)
    return EvaluationReport(**fields)


# A breach budget that never binds (as many breaches per window as tokens): for tests about
# something else than select's breach budget.
NO_BREACH_BUDGET = {"maxBreaches": 100, "targetBreachFraction": 1.0}


def make_spec(**sections: Any) -> HeliosDeploymentSpec:
    """A spec with one candidate per name in ``candidates`` (default alpha, beta) and overrides.

    The head cost is 0 unless given, so throughput is T_N * N / mean exit layer exactly.
    """
    names = sections.pop("candidates", ("alpha", "beta"))
    document: dict[str, Any] = {"candidates": [{"name": name, "model": f"test/{name}"} for name in names]}
    document.setdefault("exit", {})["headCostLayers"] = 0.0  # keeps throughput arithmetic exact
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key].update(value)
        else:
            document[key] = value
    return HeliosDeploymentSpec.model_validate(document)
