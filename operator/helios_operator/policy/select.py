"""Step 3 of the HELIOS loop: pick the candidate and the layer count L to load.

Every (candidate, L) that fits the memory budget is predicted. Only options inside the
breach budget are kept (if none is, those with the fewest breaches); among those meeting the
accuracy floor the best for the objective wins, ties going to fewer layers and then to
fewer weight bytes. If none meets the floor, the most accurate option is chosen and the
reason says so, because serving something beats serving nothing.

Both checks are made at 95% confidence, on the evaluation's Wilson bounds: the agreement's
lower bound must meet ``accuracy.minAgreement`` and the breach rate's upper bound must stay in
the budget, so 16 lucky tokens cannot pass a floor that 512 would fail. ``adapt``
(``remedies.settles``) judges settings by the same bounds and the same budget, which makes a
selection a fixed point of the monitoring loop on its own evaluation data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from helios_contracts.reports import EvaluationReport
from helios_operator.policy.decision import Decision
from helios_operator.policy.predict import Prediction, predict
from helios_operator.spec import HeliosDeploymentSpec, Objective

_OBJECTIVE_WORDS = {
    "throughput": "highest throughput",
    "latency": "lowest time per token",
    "energy": "lowest energy per token",
    "batchSize": "largest batch",
}


class NoFeasibleOption(ValueError):
    """No candidate fits the memory budget at any layer count."""


def first_layer(spec: HeliosDeploymentSpec, report: EvaluationReport) -> int:
    """Fewest layers worth loading: below ``exit.minExitLayer`` no token may exit."""
    return min(spec.exit.min_exit_layer or 1, report.num_layers_total)


def options(reports: Iterable[EvaluationReport], spec: HeliosDeploymentSpec, budget: int | None) -> list[Prediction]:
    """Every (candidate, L) that fits the budget with at least one sequence, predicted."""
    predictions = []
    for report in reports:
        for layers in range(first_layer(spec, report), report.num_layers_total + 1):
            prediction = predict(report, layers, spec, budget)
            if prediction.max_batch_size != 0:
                predictions.append(prediction)
    return predictions


def uses_energy_proxy(predictions: Iterable[Prediction]) -> bool:
    """Energy is unknown without a GPU (NVML); then time per token stands in for it."""
    return any(p.energy_per_token_joules is None for p in predictions)


def objective_value(prediction: Prediction, objective: Objective, energy_proxy: bool = False) -> float:
    """The objective as a number where higher is better."""
    if objective == "throughput":
        return prediction.tokens_per_second
    if objective == "latency":
        return -prediction.time_per_output_token_seconds
    if objective == "energy":
        energy = prediction.energy_per_token_joules
        return -(prediction.time_per_output_token_seconds if energy_proxy or energy is None else energy)
    # batchSize: an unknown batch (no budget) ranks below any known one.
    return -1.0 if prediction.max_batch_size is None else float(prediction.max_batch_size)


def best_option(predictions: Sequence[Prediction], objective: Objective) -> Prediction:
    """Best for the objective; ties -> fewer layers, then fewer weight bytes."""
    proxy = uses_energy_proxy(predictions)
    return min(predictions, key=lambda p: (-objective_value(p, objective, proxy), p.layers, p.weight_bytes))


def describe(prediction: Prediction) -> str:
    """The predicted figures in a reason string, the checked ones with their 95% bounds."""
    parts = [
        f"agreement {prediction.agreement:.3f} (>= {prediction.agreement_lower_bound:.3f} at 95%, "
        f"n={prediction.num_tokens})",
        f"{prediction.tokens_per_second:.1f} tok/s",
        f"{prediction.time_per_output_token_seconds * 1000:.2f} ms/token",
        f"breach rate {prediction.breach_rate:.2f} (<= {prediction.breach_rate_upper_bound:.2f} at 95%)",
    ]
    if prediction.energy_per_token_joules is not None:
        parts.append(f"{prediction.energy_per_token_joules:.3g} J/token")
    if prediction.max_batch_size is not None:
        parts.append(f"max batch {prediction.max_batch_size}")
    return ", ".join(parts)


def _check_inputs(reports: Sequence[EvaluationReport], spec: HeliosDeploymentSpec, budget: int | None) -> None:
    if not reports:
        raise ValueError("no evaluation reports to choose from")
    names = [report.model for report in reports]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"more than one report for {', '.join(duplicates)}")
    if spec.objective == "batchSize" and budget is None:
        raise ValueError("objective batchSize needs a memory budget")


def _no_fit_message(reports: Sequence[EvaluationReport], spec: HeliosDeploymentSpec, budget: int | None) -> str:
    smallest = min(reports, key=lambda r: r.weight_bytes(first_layer(spec, r)))
    layers = first_layer(spec, smallest)
    kv = smallest.kv_bytes_per_token_per_layer * layers * spec.context_tokens
    return (
        f"nothing fits the memory budget of {budget} bytes: the smallest option, {smallest.model} with "
        f"{layers} layer(s), needs {smallest.weight_bytes(layers)} bytes of weights plus {kv} bytes of "
        f"KV cache for one {spec.context_tokens}-token sequence"
    )


def select(
    reports: Sequence[EvaluationReport],
    spec: HeliosDeploymentSpec,
    budget: int | None,
    now: datetime | None = None,
) -> Decision:
    """The (candidate, layers) to serve, as a ``select`` decision whose reason gives the numbers."""
    _check_inputs(reports, spec, budget)
    predictions = options(reports, spec, budget)
    if not predictions:
        raise NoFeasibleOption(_no_fit_message(reports, spec, budget))
    predictions, budget_note = within_breach_budget(predictions, spec)
    floor = spec.accuracy.min_agreement
    accurate = [p for p in predictions if meets_floor(p, spec)]
    if accurate:
        ranked = accurate
        chosen = best_option(ranked, spec.objective)
        reason = (
            f"{chosen.model} with {chosen.layers} of {chosen.layers_total} layers: "
            f"{_OBJECTIVE_WORDS[spec.objective]} of {len(accurate)} options meeting agreement >= {floor:g} "
            f"at 95% ({describe(chosen)})"
        )
    else:
        top = max(p.agreement_lower_bound for p in predictions)
        ranked = [p for p in predictions if p.agreement_lower_bound == top]
        chosen = best_option(ranked, spec.objective)
        reason = (
            f"no option reaches agreement {floor:g} at 95%; chose the most accurate, {chosen.model} with "
            f"{chosen.layers} of {chosen.layers_total} layers ({describe(chosen)})"
        )
    if spec.objective == "energy" and uses_energy_proxy(ranked):
        reason += "; energy not measured (no GPU), time per token used in its place"
    return Decision.from_prediction("select", chosen, reason + budget_note, now)


def breach_budget(spec: HeliosDeploymentSpec) -> float:
    """Breaches per window an option may be predicted to cause: ``targetBreachFraction`` x ``maxBreaches``,
    the margin under the storm limit that ``adapt``'s remedies also settle into (one hysteresis band)."""
    return spec.monitoring.target_breach_fraction * spec.monitoring.max_breaches


def meets_floor(prediction: Prediction, spec: HeliosDeploymentSpec) -> bool:
    """The agreement floor, held at 95% confidence: the lower bound, not the point estimate."""
    return prediction.agreement_lower_bound >= spec.accuracy.min_agreement


def predicted_breaches(prediction: Prediction, spec: HeliosDeploymentSpec) -> float:
    """Breaches per window at the breach rate's 95% upper bound."""
    return prediction.breach_rate_upper_bound * spec.monitoring.breach_window_tokens


def within_breach_budget(predictions: Sequence[Prediction], spec: HeliosDeploymentSpec) -> tuple[list[Prediction], str]:
    """The options predicted to stay inside the breach budget, or, if none is, those with the fewest
    breaches; and what to add to the reason. Selecting an option the monitor would call a storm at
    once would only trade a decision for a remedy a minute later."""
    limit = breach_budget(spec)
    inside = [p for p in predictions if predicted_breaches(p, spec) <= limit]
    window = spec.monitoring.breach_window_tokens
    if inside:
        return inside, ""
    fewest = min(predicted_breaches(p, spec) for p in predictions)
    note = (
        f"; no option keeps predicted breaches within {limit:g} per {window} tokens at 95% "
        f"(storm limit {spec.monitoring.max_breaches}): chose among those with the fewest ({fewest:.1f})"
    )
    return [p for p in predictions if predicted_breaches(p, spec) == fewest], note
