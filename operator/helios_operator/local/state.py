"""The state file: what ``helios run`` needs to resume after it is killed.

It holds the spec's fingerprint, the evaluation reports, the decision being served and a
bounded log. On start, ``plan_start`` resumes from it only when the spec is unchanged and a
decision was reached; anything else (no file, another spec, a file from another version)
means evaluating again. Writes are atomic (temp file + rename), so a kill mid-write leaves
the previous state, never a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from helios_contracts.reports import EvaluationReport
from helios_operator.policy import Decision

STATE_VERSION = "helios.local/v1"
MAX_LOG_ENTRIES = 200

# Policy decision kinds, plus what the local run itself does and sees.
LogKind = Literal[
    "select",
    "add_layers",
    "drop_layers",
    "switch_model",
    "reassess",
    "hold",
    "evaluate",
    "resume",
    "worker_started",
    "worker_crashed",
    "handover",
    "error",
]
Phase = Literal["Starting", "Evaluating", "Serving", "Adapting", "Degraded", "Stopped", "Failed"]


class LogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: datetime
    kind: LogKind
    model: str | None = None
    layers: int | None = None
    message: str

    @classmethod
    def from_decision(cls, decision: Decision, at: datetime) -> LogEntry:
        return cls(
            at=decision.timestamp or at,
            kind=decision.kind,
            model=decision.model,
            layers=decision.layers,
            message=decision.reason,
        )


class WorkerRecord(BaseModel):
    """A worker process this run started, so a restarted run can end it if it outlived us."""

    model_config = ConfigDict(extra="forbid")

    pid: int
    url: str
    model: str
    layers: int


class RunState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal["helios.local/v1"] = STATE_VERSION
    spec_hash: str
    phase: Phase = "Starting"
    proxy_url: str | None = None
    run_pid: int | None = None
    reports: list[EvaluationReport] = Field(default_factory=list)
    decision: Decision | None = Field(default=None, description="The setting being served.")
    workers: list[WorkerRecord] = Field(default_factory=list)
    log: list[LogEntry] = Field(default_factory=list)
    updated_at: datetime | None = None

    def with_log(self, entry: LogEntry) -> RunState:
        return self.model_copy(update={"log": [*self.log, entry][-MAX_LOG_ENTRIES:]})


class StateFileError(ValueError):
    """A state file that exists but cannot be used; the message says why."""


def load_state(path: Path) -> RunState | None:
    """The saved state, None if there is no file, StateFileError if it is unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StateFileError(f"cannot read {path}: {error.strerror or error}") from error
    try:
        return RunState.model_validate_json(text)
    except ValidationError as error:
        raise StateFileError(f"{path} is not a helios run state file ({error.error_count()} problems)") from error


def save_state(path: Path, state: RunState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(state.model_dump(mode="json"), indent=1))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class Resume(BaseModel):
    """Start serving ``decision`` at once, with the saved reports."""

    reports: list[EvaluationReport]
    decision: Decision


class Evaluate(BaseModel):
    """Evaluate the candidates first, because ``reason``."""

    reason: str


def plan_start(saved: RunState | None, current_hash: str) -> Resume | Evaluate:
    """Resume only what was decided for this very spec; everything else is re-evaluated."""
    if saved is None:
        return Evaluate(reason="no saved state")
    if saved.spec_hash != current_hash:
        return Evaluate(reason=f"the spec changed (saved {saved.spec_hash}, now {current_hash})")
    if saved.decision is None or not saved.reports:
        return Evaluate(reason="the previous run stopped before choosing a model")
    if saved.decision.model not in {report.model for report in saved.reports}:
        return Evaluate(reason=f"no saved report for the served model {saved.decision.model!r}")
    return Resume(reports=saved.reports, decision=saved.decision)
