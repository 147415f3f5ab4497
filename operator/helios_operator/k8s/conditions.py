"""Status conditions (pure): type/status/reason/message/observedGeneration/lastTransitionTime.

Condition types: ``SpecValid``, ``Evaluated``, ``TelemetryFresh`` and the ``Ready`` summary.
``lastTransitionTime`` changes only when a condition's status flips, as Kubernetes expects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from helios_operator.spec import Condition

Status = Literal["True", "False", "Unknown"]
SPEC_VALID = "SpecValid"
EVALUATED = "Evaluated"
TELEMETRY_FRESH = "TelemetryFresh"
PROGRESSING = "Progressing"  # the serving rollout, from the Deployment's own condition
SHADOW_CHECKED = "ShadowChecked"  # the shadow check's last round (only with monitoring.shadow.fraction > 0)
READY = "Ready"
_SERVING_PHASES = ("Serving", "Adapting")


def set_condition(
    conditions: Iterable[Mapping[str, Any]],
    type_: str,
    status: Status,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The conditions with ``type_`` set; others kept in order, a new type appended."""
    updated: list[dict[str, Any]] = []
    found = False
    for condition in conditions:
        if condition.get("type") != type_:
            updated.append(dict(condition))
            continue
        found = True
        unchanged = condition.get("status") == status and condition.get("lastTransitionTime")
        when = condition["lastTransitionTime"] if unchanged else _timestamp(now)
        updated.append(_condition(type_, status, reason, message, generation, when))
    if not found:
        updated.append(_condition(type_, status, reason, message, generation, _timestamp(now)))
    return updated


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(type_: str, status: Status, reason: str, message: str, generation: int | None, when: str) -> dict:
    condition = Condition(
        type=type_, status=status, reason=reason, message=message, observed_generation=generation
    ).model_dump(mode="json", by_alias=True, exclude_none=True)
    condition["lastTransitionTime"] = when
    return condition


def get_condition(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def ready_summary(phase: str, ready_replicas: int, desired_replicas: int) -> tuple[Status, str, str]:
    """(status, reason, message) of the Ready condition."""
    if phase == "Invalid":
        return "False", "InvalidSpec", "the spec is invalid; see the SpecValid condition"
    if phase in ("Pending", "Evaluating") and ready_replicas == 0:
        return "False", phase, f"{phase.lower()}: no worker serves yet"
    if phase == "Degraded":
        return "False", "TelemetryMissing", "workers' telemetry is missing; the last decision is held"
    if desired_replicas == 0:
        return "False", "ScaledToZero", "spec.replicas is 0"
    if ready_replicas == 0:
        return "False", "NoReadyWorkers", f"0 of {desired_replicas} workers ready"
    if phase not in _SERVING_PHASES and phase != "Evaluating":
        return "False", phase, f"phase {phase}"
    return "True", "WorkersReady", f"{ready_replicas} of {desired_replicas} workers ready"
