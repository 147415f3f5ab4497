"""What the adaptation loop remembers between scrapes, and how events change it.

All transitions are pure: ``record`` folds a scrape in, ``apply`` a decision that was
carried out, ``with_reports`` fresh evaluation reports. Each returns a new state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from helios_contracts.reports import EvaluationReport
from helios_operator.policy.decision import Decision
from helios_operator.policy.telemetry import Telemetry
from helios_operator.policy.window import BreachEntry, BreachWindow, ShadowEntry, ShadowWindow
from helios_operator.spec import HeliosDeploymentSpec

_CHANGES = frozenset({"select", "add_layers", "drop_layers", "switch_model"})


@dataclass(frozen=True, slots=True)
class LayerRaise:
    """``layers`` of ``model`` proved too few at ``at``; hysteresis keeps HELIOS from going back."""

    model: str
    layers: int
    at: datetime


@dataclass(frozen=True)
class AdaptState:
    model: str
    layers: int
    reports: Mapping[str, EvaluationReport]
    budget: int | None
    breaches: BreachWindow
    shadow: ShadowWindow
    last_change_at: datetime | None = None
    last_assessment_at: datetime | None = None
    num_requests_since_assessment: int = 0
    last_telemetry_at: datetime | None = None
    last_raise: LayerRaise | None = None

    @property
    def report(self) -> EvaluationReport:
        return self.reports[self.model]


def _index(reports: Iterable[EvaluationReport]) -> dict[str, EvaluationReport]:
    return {report.model: report for report in reports}


def initial_state(
    decision: Decision,
    reports: Iterable[EvaluationReport],
    spec: HeliosDeploymentSpec,
    budget: int | None,
    now: datetime,
) -> AdaptState:
    """State right after the first selection has been loaded."""
    by_name = _index(reports)
    if decision.model not in by_name:
        raise ValueError(f"no evaluation report for the selected model {decision.model!r}")
    return AdaptState(
        model=decision.model,
        layers=decision.layers,
        reports=by_name,
        budget=budget,
        breaches=BreachWindow(spec.monitoring.breach_window_tokens),
        shadow=ShadowWindow(spec.monitoring.shadow.window_tokens),
        last_change_at=now,
        last_assessment_at=now,
    )


def record(state: AdaptState, telemetry: Telemetry) -> AdaptState:
    """Fold one scrape in. A scrape already seen, or from another model/layer count (a worker
    still switching), is ignored: its tokens say nothing about the current setting."""
    if (telemetry.model, telemetry.layers) != (state.model, state.layers):
        return state
    if state.last_telemetry_at is not None and telemetry.observed_at <= state.last_telemetry_at:
        return state
    return replace(
        state,
        breaches=state.breaches.add(
            BreachEntry(
                float(telemetry.num_new_tokens),
                float(telemetry.num_new_breaches),
                tuple(float(n) for n in telemetry.exit_histogram),
            )
        ),
        shadow=state.shadow.add(ShadowEntry(float(telemetry.num_shadow_tokens), float(telemetry.num_shadow_matches))),
        num_requests_since_assessment=state.num_requests_since_assessment + telemetry.num_new_requests,
        last_telemetry_at=telemetry.observed_at,
    )


def apply(state: AdaptState, decision: Decision | None, now: datetime) -> AdaptState:
    """The state once ``decision`` has been carried out."""
    if decision is None or decision.kind == "hold":
        return state
    if decision.kind == "reassess":
        return replace(state, num_requests_since_assessment=0, last_assessment_at=now)
    if decision.kind not in _CHANGES:
        raise ValueError(f"unknown decision kind {decision.kind!r}")
    if decision.model not in state.reports:
        raise ValueError(f"no evaluation report for {decision.model!r}")
    last_raise = state.last_raise
    if decision.kind == "add_layers":
        last_raise = LayerRaise(state.model, state.layers, now)
    # Old windows describe the old setting; a new one starts empty.
    return replace(
        state,
        model=decision.model,
        layers=decision.layers,
        breaches=BreachWindow(state.breaches.capacity),
        shadow=ShadowWindow(state.shadow.capacity),
        last_change_at=now,
        last_raise=last_raise,
    )


def with_reports(state: AdaptState, reports: Iterable[EvaluationReport]) -> AdaptState:
    """Fresh evaluation reports (after a reassessment); they must include the current model."""
    by_name = _index(reports)
    if state.model not in by_name:
        raise ValueError(f"new reports lack the model being served, {state.model!r}")
    return replace(state, reports=by_name)
