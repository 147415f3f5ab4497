"""The adaptation state in and out of ``status.policyState`` (pure), so that restarts keep it.

Windows are stored as their totals: a window's decisions read only totals, and the order of
tokens inside it is lost anyway when it is cut (pro rata). The reports are not here: they are
in the reports ConfigMap, which ``restore`` reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from helios_contracts.reports import EvaluationReport
from helios_operator.heliosstatus import LayerRaiseStatus, PolicyState, WindowTotals
from helios_operator.policy import AdaptState
from helios_operator.policy.state import LayerRaise
from helios_operator.policy.window import BreachEntry, BreachWindow, ShadowEntry, ShadowWindow
from helios_operator.spec import HeliosDeploymentSpec


def encode(state: AdaptState) -> dict[str, Any]:
    histogram = state.breaches.exit_histogram()
    raise_ = state.last_raise
    persisted = PolicyState(
        model=state.model,
        layers=state.layers,
        breaches=WindowTotals(
            tokens=state.breaches.num_tokens, hits=state.breaches.num_breaches, exit_histogram=list(histogram or [])
        ),
        shadow=WindowTotals(tokens=state.shadow.num_tokens, hits=sum(entry.matches for entry in state.shadow.entries)),
        last_change_at=state.last_change_at,
        last_assessment_at=state.last_assessment_at,
        requests_since_assessment=state.num_requests_since_assessment,
        last_telemetry_at=state.last_telemetry_at,
        last_raise=None if raise_ is None else LayerRaiseStatus(model=raise_.model, layers=raise_.layers, at=raise_.at),
    )
    return persisted.model_dump(mode="json", by_alias=True, exclude_none=True)


def decode(
    stored: Mapping[str, Any] | None,
    reports: Iterable[EvaluationReport],
    spec: HeliosDeploymentSpec,
    budget: int | None,
    now: datetime,
) -> AdaptState | None:
    """The state a previous operator kept, or None when there is none usable (then start afresh)."""
    if not stored:
        return None
    try:
        persisted = PolicyState.model_validate(stored)
    except ValidationError:
        return None
    by_name = {report.model: report for report in reports}
    if persisted.model not in by_name:
        return None
    breaches = BreachWindow(spec.monitoring.breach_window_tokens).add(
        BreachEntry(persisted.breaches.tokens, persisted.breaches.hits, tuple(persisted.breaches.exit_histogram))
    )
    shadow = ShadowWindow(spec.monitoring.shadow.window_tokens).add(
        ShadowEntry(persisted.shadow.tokens, persisted.shadow.hits)
    )
    raise_ = persisted.last_raise
    return AdaptState(
        model=persisted.model,
        layers=persisted.layers,
        reports=by_name,
        budget=budget,
        breaches=breaches,
        shadow=shadow,
        last_change_at=persisted.last_change_at or now,
        last_assessment_at=persisted.last_assessment_at or now,
        num_requests_since_assessment=persisted.requests_since_assessment,
        last_telemetry_at=persisted.last_telemetry_at,
        last_raise=None if raise_ is None else LayerRaise(raise_.model, raise_.layers, raise_.at),
    )
