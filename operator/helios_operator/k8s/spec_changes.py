"""Which parts of a HeliosDeployment spec changed since the operator last acted on it (pure).

The status keeps a short hash per part (``status.actedSpec``). A pass compares them with the
live spec: a change to what an evaluation measures (the candidates, the exit rule, the
evaluation's prompts and lengths) needs new reports; a change to what selection weighs (the
objective, the accuracy floor, the memory budget, the context length, the breach budget) only
needs ``select`` run again on the reports HELIOS has. Everything else (replicas, the worker's
pod settings, reassessment cadence) is carried out by re-rendering the children.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from helios_operator.spec import HeliosDeploymentSpec

# Evaluation settings that do not change what a report measures.
_CADENCE = {"reassess_every_requests", "reassess_interval", "timeout"}
EVALUATION_PARTS = ("candidates", "exit", "evaluation")
SELECTION_PARTS = ("objective", "accuracy", "memoryBudget", "contextTokens", "monitoring")


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def fingerprints(spec: HeliosDeploymentSpec) -> dict[str, str]:
    """A short hash of each part of ``spec`` that a decision depends on."""
    parts = {
        # exits and calibrate only when set, so that specs without them keep the hashes they had
        "candidates": [
            {key: value for key, value in c.model_dump(mode="json").items() if value is not None or key == "revision"}
            for c in spec.candidates
        ],
        "exit": spec.exit.model_dump(mode="json"),
        "evaluation": spec.evaluation.model_dump(mode="json", exclude=_CADENCE),
        "objective": spec.objective,
        "accuracy": spec.accuracy.model_dump(mode="json"),
        "memoryBudget": spec.memory_budget,
        "contextTokens": spec.context_tokens,
        "monitoring": spec.monitoring.model_dump(mode="json"),
    }
    return {name: _digest(value) for name, value in parts.items()}


def changed_parts(acted: Mapping[str, str] | None, spec: HeliosDeploymentSpec) -> tuple[list[str], list[str]]:
    """(evaluation parts changed, selection parts changed) since ``acted``; none when nothing was acted on yet."""
    if not acted:
        return [], []
    now = fingerprints(spec)
    changed = [name for name, digest in now.items() if acted.get(name) != digest]
    return [p for p in EVALUATION_PARTS if p in changed], [p for p in SELECTION_PARTS if p in changed]
