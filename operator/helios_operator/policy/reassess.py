"""Step 6 of the HELIOS loop: when to re-evaluate the candidates, and what to do with the result.

A reassessment switches only when the new best beats the current setting by more than
``monitoring.minImprovement`` on the objective (hysteresis against measurement noise),
unless the current setting no longer meets the accuracy floor (at 95%, as ``select`` judges
it) or no longer fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from helios_contracts.reports import EvaluationReport
from helios_operator.policy.decision import Decision
from helios_operator.policy.predict import Prediction, predict
from helios_operator.policy.select import describe, meets_floor, objective_value, select, uses_energy_proxy
from helios_operator.policy.state import AdaptState
from helios_operator.spec import HeliosDeploymentSpec


def reassessment_due(state: AdaptState, spec: HeliosDeploymentSpec, now: datetime) -> str | None:
    """Why a reassessment is due now, or None (never within ``minReassessInterval`` of the last one)."""
    last = state.last_assessment_at
    if last is not None and (now - last).total_seconds() < spec.evaluation.min_reassess_interval:
        return None
    every = spec.evaluation.reassess_every_requests
    if state.num_requests_since_assessment >= every:
        return f"{state.num_requests_since_assessment} requests since the last assessment (every {every})"
    interval = spec.evaluation.reassess_interval
    if interval is not None and state.last_assessment_at is not None:
        elapsed = (now - state.last_assessment_at).total_seconds()
        if elapsed >= interval:
            return f"{elapsed:.0f} s since the last assessment (every {interval:g} s)"
    return None


def relative_gain(better: Prediction, current: Prediction, spec: HeliosDeploymentSpec) -> float:
    """How much ``better`` improves on ``current`` for the objective, as a fraction of current."""
    proxy = uses_energy_proxy([better, current])
    new = objective_value(better, spec.objective, proxy)
    old = objective_value(current, spec.objective, proxy)
    if old == 0:
        return float("inf") if new > old else 0.0
    return (new - old) / abs(old)


def reselect(
    state: AdaptState, reports: Sequence[EvaluationReport], spec: HeliosDeploymentSpec, now: datetime
) -> Decision:
    """The decision after re-evaluating: switch, resize, or hold the current setting."""
    by_name = {report.model: report for report in reports}
    if state.model not in by_name:
        raise ValueError(f"reassessment reports lack the model being served, {state.model!r}")
    best = select(reports, spec, state.budget, now)
    current = predict(by_name[state.model], state.layers, spec, state.budget)
    if (best.model, best.layers) == (state.model, state.layers):
        reason = f"reassessment: {state.model} with {state.layers} layers is still the best ({describe(current)})"
        return Decision.from_prediction("hold", current, reason, now)
    best_prediction = predict(by_name[best.model], best.layers, spec, state.budget)
    current_is_valid = meets_floor(current, spec) and current.max_batch_size != 0
    if current_is_valid and meets_floor(best_prediction, spec):
        gain = relative_gain(best_prediction, current, spec)
        if gain <= spec.monitoring.min_improvement:
            reason = (
                f"reassessment: best is {best.model} with {best.layers} layers, only {gain:.1%} better on "
                f"{spec.objective} (switch above {spec.monitoring.min_improvement:.0%}); keeping "
                f"{state.model} with {state.layers} layers ({describe(current)})"
            )
            return Decision.from_prediction("hold", current, reason, now)
    if best.model != state.model:
        kind = "switch_model"
    else:
        kind = "add_layers" if best.layers > state.layers else "drop_layers"
    return best.model_copy(update={"kind": kind, "reason": f"reassessment: {best.reason}"})
