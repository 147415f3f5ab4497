"""Predicted figures for serving one candidate with its first L layers loaded.

Everything is scaled from what the evaluation measured at full depth, by the work a token
does. Decode is memory-bound, so a token's time is taken as proportional to the weight
bytes it reads: one unit per decoder layer it passes, plus ``h`` units per exit test
(final norm + LM head) it makes. With greedy exit at L:

    work(L)    = m(L) + h * checks(L)     m(L): mean exit layer, checks(L) = m(L) - e + 1
    work(full) = N + h                    a plain full-depth pass: N layers, one head

where ``e`` is the first layer with an exit test (``exit.minExitLayer``, else 1). Then
tokens/s scales by work(full) / work(L) and time and energy per token by the inverse. ``h``
is ``exit.headCostLayers`` when set; otherwise it is estimated as half the shared weight
bytes over one layer's bytes (embedding and LM head of equal size, only the head read per
test). A large vocabulary makes ``h`` large, and then only very early exits pay off.
The batch size that the freed memory allows is given separately (``max_batch_size``).
"""

from __future__ import annotations

from dataclasses import dataclass

from helios_contracts.reports import EvaluationReport
from helios_operator.policy.memory import max_batch_size, weight_bytes
from helios_operator.spec import HeliosDeploymentSpec


@dataclass(frozen=True, slots=True)
class Prediction:
    model: str
    layers: int
    layers_total: int
    agreement: float
    breach_rate: float
    # 95% Wilson bounds over the evaluation's num_tokens: what the policy's checks compare.
    agreement_lower_bound: float
    breach_rate_upper_bound: float
    num_tokens: int
    mean_exit_layer: float
    tokens_per_second: float
    time_per_output_token_seconds: float
    energy_per_token_joules: float | None
    weight_bytes: int
    max_batch_size: int | None


def head_cost_layers(report: EvaluationReport, spec: HeliosDeploymentSpec) -> float:
    """Cost of one exit test in decoder-layer units (see the module docstring)."""
    if spec.exit.head_cost_layers is not None:
        return spec.exit.head_cost_layers
    if report.bytes_per_layer == 0:
        return 0.0
    return report.bytes_shared / 2 / report.bytes_per_layer


def work_ratio(report: EvaluationReport, layers: int, spec: HeliosDeploymentSpec) -> float:
    """work(L) / work(full): the fraction of a full-depth token's time a token takes at L."""
    head = head_cost_layers(report, spec)
    # A token passes at least one layer; this also keeps an empty report from dividing by 0.
    mean_exit = max(1.0, report.mean_exit_layer_by_layer[layers - 1])
    first_check = min(spec.exit.min_exit_layer or 1, layers)
    checks = max(1.0, mean_exit - first_check + 1)
    return (mean_exit + head * checks) / (report.num_layers_total + head)


def predict(report: EvaluationReport, layers: int, spec: HeliosDeploymentSpec, budget: int | None) -> Prediction:
    """What serving ``report.model`` with its first ``layers`` layers should give."""
    if not 1 <= layers <= report.num_layers_total:
        raise ValueError(f"{report.model}: layers must be in 1..{report.num_layers_total}, got {layers}")
    ratio = work_ratio(report, layers, spec)
    full_depth_tpot = report.time_per_output_token_seconds or (
        1 / report.tokens_per_second if report.tokens_per_second > 0 else 0.0
    )
    energy = report.energy_per_token_joules
    return Prediction(
        model=report.model,
        layers=layers,
        layers_total=report.num_layers_total,
        agreement=report.greedy_agreement_by_layer[layers - 1],
        breach_rate=report.breach_rate_by_layer[layers - 1],
        agreement_lower_bound=report.greedy_agreement_lower_bound_by_layer[layers - 1],
        breach_rate_upper_bound=report.breach_rate_upper_bound_by_layer[layers - 1],
        num_tokens=report.num_tokens,
        mean_exit_layer=report.mean_exit_layer_by_layer[layers - 1],
        tokens_per_second=report.tokens_per_second / ratio,
        time_per_output_token_seconds=full_depth_tpot * ratio,
        energy_per_token_joules=None if energy is None else energy * ratio,
        weight_bytes=weight_bytes(report, layers),
        max_batch_size=max_batch_size(report, layers, budget, spec.context_tokens),
    )
