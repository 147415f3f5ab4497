"""Status content (pure): the evaluation table, the telemetry summary, the decision history."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from helios_contracts.reports import EvaluationReport
from helios_operator.heliosstatus import CandidateEvaluation, HeliosStatusReport, TelemetrySummary
from helios_operator.policy import AdaptState, Decision, NoFeasibleOption, predict, select
from helios_operator.spec import MAX_DECISION_HISTORY, HeliosDeploymentSpec

CHANGES = frozenset({"select", "add_layers", "drop_layers", "switch_model"})


def layers_text(layers: int | None, total: int | None) -> str | None:
    return None if layers is None else f"{layers}/{total if total is not None else '?'}"


def evaluation_table(
    reports: Iterable[EvaluationReport],
    spec: HeliosDeploymentSpec,
    budget: int | None,
    serving: tuple[str, int] | None,
) -> list[CandidateEvaluation]:
    """One row per candidate: the served one at its layer count, others at their own best L."""
    rows = []
    for report in reports:
        chosen = serving is not None and serving[0] == report.model
        if chosen and serving is not None:
            layers = serving[1]
        else:
            try:
                layers = select([report], spec, budget).layers
            except (NoFeasibleOption, ValueError):
                layers = report.num_layers_total
        prediction = predict(report, layers, spec, budget)
        rows.append(CandidateEvaluation.from_prediction(prediction, report.model_ref, chosen))  # bounds included
    return rows


def telemetry_summary(
    state: AdaptState, observed_at: datetime, num_workers: int, num_scraped: int, tokens_per_second: float
) -> TelemetrySummary:
    shadow = state.shadow.agreement
    return TelemetrySummary(
        observed_at=observed_at,
        num_workers=num_workers,
        num_scraped=num_scraped,
        tokens_per_second=round(tokens_per_second, 3),
        breach_rate=round(state.breaches.breach_rate, 4),
        window_tokens=round(state.breaches.num_tokens, 1),
        requests_since_assessment=state.num_requests_since_assessment,
        shadow_agreement=None if shadow is None else round(shadow, 4),
    )


ROUTINE = frozenset({"hold", "reassess"})


def append_history(history: Sequence[Mapping[str, Any]], decision: Decision) -> list[dict[str, Any]]:
    """The status's decision history with ``decision`` added, newest last, bounded.

    Holds and reassessments repeat (every reassessment that finds nothing better is a reassess and a
    hold): since the last change only the newest of each kind is kept, with a ``repeats`` count, so
    the changes themselves stay in the history.
    """
    entry = decision.summary().model_dump(mode="json", by_alias=True, exclude_none=True)
    entries = [dict(item) for item in history]
    if entry["kind"] in ROUTINE:
        last_change = max((i for i, item in enumerate(entries) if item["kind"] not in ROUTINE), default=-1)
        for index in range(len(entries) - 1, last_change, -1):
            if entries[index]["kind"] == entry["kind"]:
                entry["repeats"] = int(entries.pop(index).get("repeats") or 1) + 1
                break
    return [*entries, entry][-MAX_DECISION_HISTORY:]


def helios_status_report(
    status: Mapping[str, Any], table: list[CandidateEvaluation], **extra: Any
) -> HeliosStatusReport:
    """The HeliosStatus content mirrored from the HeliosDeployment status plus the table."""
    return HeliosStatusReport(
        phase=status.get("phase", "Pending"),
        model=status.get("currentModel"),
        layers=status.get("layers"),
        candidates=table,
        failed_candidates=status.get("failedCandidates", []),
        last_decision=status.get("lastDecision"),
        decision_history=status.get("decisionHistory", []),
        **extra,
    )


def status_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level status keys whose value changed (what a merge patch must send)."""
    return {key: value for key, value in new.items() if old.get(key) != value}
