"""Drop layers that traffic no longer needs, freeing memory for a larger batch.

Only on sustained evidence: a full window whose exit histogram shows at most
``headroom.maxTailFraction`` of tokens exiting beyond the new layer count. Those tail
tokens would become greedy exits (breaches) at the new L, so they count against the
breach target as well as the report's corrected prediction does, and the agreement at the
new L must still meet the floor. Hysteresis: a layer count that proved too few (layers were
added from it) is not returned to for ``headroom.stormMemory``.
"""

from __future__ import annotations

from datetime import datetime

from helios_operator.policy.decision import Decision
from helios_operator.policy.predict import predict
from helios_operator.policy.remedies import breach_target, breaches_per_window, corrections, settles
from helios_operator.policy.select import describe, first_layer
from helios_operator.policy.state import AdaptState
from helios_operator.spec import HeliosDeploymentSpec


def _fewest_allowed_layers(state: AdaptState, spec: HeliosDeploymentSpec, now: datetime) -> int:
    fewest = first_layer(spec, state.report)
    mark = state.last_raise
    if (
        mark is not None
        and mark.model == state.model
        and (now - mark.at).total_seconds() < spec.monitoring.headroom.storm_memory
    ):
        fewest = max(fewest, mark.layers + 1)
    return fewest


def plan_drop(state: AdaptState, spec: HeliosDeploymentSpec, now: datetime) -> Decision | None:
    """Fewest layers the last full window says are enough, or None to keep the current count."""
    window = state.breaches
    histogram = window.exit_histogram()
    if not window.is_full or histogram is None:
        return None
    fix = corrections(state, spec)
    tokens = window.num_tokens
    limit = spec.monitoring.headroom.max_tail_fraction
    for layers in range(_fewest_allowed_layers(state, spec, now), state.layers):
        tail = sum(histogram[layers:]) / tokens
        if tail > limit:
            continue
        prediction = predict(state.report, layers, spec, state.budget)
        breaches = max(breaches_per_window(prediction, fix, spec), tail * spec.monitoring.breach_window_tokens)
        if settles(prediction, fix, spec) and breaches <= breach_target(spec):
            reason = (
                f"headroom: over the last {tokens:.0f} tokens {tail:.1%} exited beyond layer {layers} "
                f"(limit {limit:.1%}); drop {state.layers - layers} layer(s) to {layers}: predicted "
                f"{breaches:.0f} breaches per window (target <= {breach_target(spec):g}), "
                f"{describe(prediction)}"
            )
            return Decision.from_prediction("drop_layers", prediction, reason)
    return None
