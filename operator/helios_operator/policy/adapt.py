"""The monitoring loop's rule book: one scrape in, at most one decision out.

Order of the rules: stale telemetry -> hold; cooldown -> nothing; breach storm -> remedy;
shadow agreement under the floor -> remedy; reassessment due -> reassess; headroom ->
drop layers. ``adapt`` judges a state that already holds the scrape (``record``); ``step``
does record -> adapt -> apply for callers that carry decisions out at once.
"""

from __future__ import annotations

from datetime import datetime

from helios_operator.policy.decision import Decision
from helios_operator.policy.headroom import plan_drop
from helios_operator.policy.reassess import reassessment_due
from helios_operator.policy.remedies import remedy
from helios_operator.policy.state import AdaptState, apply, record
from helios_operator.policy.telemetry import Telemetry
from helios_operator.spec import HeliosDeploymentSpec


def _hold(state: AdaptState, why: str, now: datetime) -> Decision:
    reason = f"{why}; keeping {state.model} with {state.layers} layers"
    return Decision(kind="hold", model=state.model, layers=state.layers, reason=reason, timestamp=now)


def _telemetry_problem(
    state: AdaptState, telemetry: Telemetry | None, spec: HeliosDeploymentSpec, now: datetime
) -> str | None:
    if telemetry is None:
        return "no telemetry from the worker"
    age = telemetry.age_seconds(now)
    limit = spec.monitoring.stale_after_seconds
    if age > limit:
        return f"telemetry stale: last scrape {age:.0f} s old (limit {limit:g} s)"
    if (telemetry.model, telemetry.layers) != (state.model, state.layers):
        return (
            f"worker reports {telemetry.model} with {telemetry.layers} layers, expected {state.model} "
            f"with {state.layers}: waiting for the change to finish"
        )
    return None


def _in_cooldown(state: AdaptState, spec: HeliosDeploymentSpec, now: datetime) -> bool:
    if state.last_change_at is None:
        return False
    return (now - state.last_change_at).total_seconds() < spec.monitoring.cooldown


def adapt(state: AdaptState, telemetry: Telemetry | None, spec: HeliosDeploymentSpec, now: datetime) -> Decision | None:
    """What to do after the scrape ``telemetry`` (already folded into ``state``), or None."""
    problem = _telemetry_problem(state, telemetry, spec, now)
    if problem is not None:
        return _hold(state, problem, now)
    if _in_cooldown(state, spec, now):
        return None
    decision = _next_decision(state, spec, now)
    return None if decision is None else decision.model_copy(update={"timestamp": now})


def _next_decision(state: AdaptState, spec: HeliosDeploymentSpec, now: datetime) -> Decision | None:
    monitoring = spec.monitoring
    window = state.breaches
    if window.num_breaches > monitoring.max_breaches:
        storm = (
            f"breach storm: {window.num_breaches:.0f} breaches in the last {window.num_tokens:.0f} tokens "
            f"> {monitoring.max_breaches} with {state.model} at {state.layers} layers"
        )
        return remedy(state, spec, storm)
    shadow = state.shadow.agreement
    if state.shadow.is_full and shadow is not None and shadow < spec.accuracy.min_agreement:
        drift = (
            f"shadow check: {shadow:.3f} of the last {state.shadow.num_tokens:.0f} sampled tokens match full "
            f"depth < {spec.accuracy.min_agreement:g} with {state.model} at {state.layers} layers"
        )
        return remedy(state, spec, drift)
    due = reassessment_due(state, spec, now)
    if due is not None:
        return Decision(kind="reassess", model=state.model, layers=state.layers, reason=f"reassess: {due}")
    return plan_drop(state, spec, now)


def step(
    state: AdaptState, telemetry: Telemetry | None, spec: HeliosDeploymentSpec, now: datetime
) -> tuple[AdaptState, Decision | None]:
    """Record the scrape, decide, and return the state as it is once the decision is carried out."""
    if telemetry is not None:
        state = record(state, telemetry)
    decision = adapt(state, telemetry, spec, now)
    return apply(state, decision, now), decision
