"""A worker in evaluation mode: evaluate candidates in a background thread, report over HTTP.

``helios serve --mode evaluate`` (``HELIOS_MODE=evaluate``, what the operator's evaluation pods
set) builds one with ``EvaluationService.from_settings(settings, os.environ)``, starts it
instead of loading a model to serve, and answers ``GET /v1/helios/evaluation`` with
``provider()``, one of::

    {"status": "pending"}                                              # before start()
    {"status": "running", "current": name, "completed": k, "total": n}
    {"status": "done", "reports": [EvaluationReport JSON, ...]}
    {"status": "failed", "reason": "..."}

(the operator's ``workers.EvaluationStatus`` reads it). The environment is the operator's pod
spec (``manifests.build_evaluation_pod``); this module is its only reader:

- ``HELIOS_EVAL_CANDIDATES``: JSON list of ``{"name", "model", "revision"?, "exits"?}`` (the spec's
  candidates; ``exits`` a calibrated-exits directory, which the report then records); unset: the
  worker's own ``--model`` / ``HELIOS_MODEL`` (with its ``--exits`` / ``HELIOS_EXITS``), named as it
  serves it
- ``HELIOS_EVAL_PROMPTS``: JSON list of prompt strings; unset or empty: the packaged
  in-domain prompts (the operator sends none when the spec asks for recent traffic and there
  is none yet)
- ``HELIOS_MAX_NEW_TOKENS``: tokens generated per prompt (default 32)
- ``HELIOS_EVAL_TIME_BUDGET``: seconds of generation each candidate may take (the spec's
  ``evaluation.timeBudget``); unset: no limit. A candidate cut by it reports the tokens it got.

The exit threshold and device are the server's own settings (``HELIOS_EXIT_THRESHOLD``,
``HELIOS_DEVICE``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import PositiveFloat, PositiveInt, TypeAdapter, ValidationError

from helios_contracts.candidate import Candidate
from helios_contracts.model_uris import from_uri
from helios_contracts.reports import EvaluationReport
from helios_worker.evaluation import evaluate_candidates

if TYPE_CHECKING:
    from helios_worker.gpu import GpuTelemetry
    from helios_worker.server.settings import ServerSettings

logger = logging.getLogger("helios.evaluation")

CANDIDATES_ENV = "HELIOS_EVAL_CANDIDATES"
PROMPTS_ENV = "HELIOS_EVAL_PROMPTS"
MAX_NEW_TOKENS_ENV = "HELIOS_MAX_NEW_TOKENS"
TIME_BUDGET_ENV = "HELIOS_EVAL_TIME_BUDGET"
DEFAULT_MAX_NEW_TOKENS = 32

Evaluate = Callable[..., list[EvaluationReport]]
_CANDIDATES = TypeAdapter(list[Candidate])
_PROMPTS = TypeAdapter(list[str])
_MAX_NEW_TOKENS = TypeAdapter(PositiveInt)
_TIME_BUDGET = TypeAdapter(PositiveFloat)


def default_prompts_file() -> Path:
    return Path(str(resources.files("helios_worker") / "assets" / "prompts" / "in_domain.txt"))


def default_prompts() -> list[str]:
    return [line for line in default_prompts_file().read_text().splitlines() if line.strip()]


def _read(environ: Mapping[str, str], name: str, adapter: TypeAdapter[Any]) -> Any:
    """A JSON-valued variable, validated; ValueError naming the variable."""
    try:
        return adapter.validate_json(environ[name])
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{name}: {first['msg']}{f' at {where}' if where else ''}") from None


class EvaluationService:
    def __init__(
        self,
        candidates: Sequence[tuple[str, str]],
        prompts: Sequence[str],
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        exit_threshold: float = 0.8,
        device: str = "cpu",
        time_budget: float | None = None,
        exits: Mapping[str, str] | None = None,
        telemetry: GpuTelemetry | None = None,
        evaluate: Evaluate = evaluate_candidates,
    ) -> None:
        if not candidates or not prompts:
            raise ValueError("evaluation needs at least one candidate and one prompt")
        names = [name for name, _ in candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate names must be unique, got {', '.join(names)}")
        self.candidates = list(candidates)
        self.prompts = list(prompts)
        self.settings: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "exit_threshold": exit_threshold,
            "device": device,
            "time_budget": time_budget,
            "exits": dict(exits or {}),  # candidate name -> calibrated-exits directory
        }
        self.telemetry = telemetry  # energy per token when evaluating on a GPU
        # Called on the evaluation thread with the reports before the status turns "done"
        # (a server publishes them as metrics there); an exception in it is logged and ignored.
        self.on_done: Callable[[list[EvaluationReport]], None] = lambda _reports: None
        self._evaluate = evaluate  # injectable so the threading can be tested without models
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"status": "pending"}
        self._current: str | None = None  # candidate being evaluated
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: ServerSettings, environ: Mapping[str, str]) -> EvaluationService:
        """The evaluation the worker's settings and environment ask for; ValueError naming a bad variable."""
        if CANDIDATES_ENV in environ:
            listed = _read(environ, CANDIDATES_ENV, _CANDIDATES)
            if not listed:
                raise ValueError(f"{CANDIDATES_ENV}: the list is empty; give at least one candidate")
            candidates = [(c.name, c.reference) for c in listed]
            exits = {c.name: from_uri(c.exits) for c in listed if c.exits}
        else:
            candidates = [(settings.model_name, settings.model_ref)]
            exits = {settings.model_name: settings.exits} if settings.exits else {}
        prompts = _read(environ, PROMPTS_ENV, _PROMPTS) if PROMPTS_ENV in environ else []
        prompts = [prompt for prompt in prompts if prompt.strip()] or default_prompts()
        max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        if MAX_NEW_TOKENS_ENV in environ:
            max_new_tokens = _read(environ, MAX_NEW_TOKENS_ENV, _MAX_NEW_TOKENS)
        time_budget = _read(environ, TIME_BUDGET_ENV, _TIME_BUDGET) if TIME_BUDGET_ENV in environ else None
        from helios_worker.device import resolve_device

        device = str(resolve_device(settings.device))
        telemetry = None
        if device.startswith("cuda"):
            from helios_worker.gpu import GpuTelemetry

            telemetry = GpuTelemetry.open()
        return cls(
            candidates,
            prompts,
            max_new_tokens=max_new_tokens,
            exit_threshold=settings.exit_threshold,
            device=device,
            time_budget=time_budget,
            exits=exits,
            telemetry=telemetry,
        )

    def start(self) -> None:
        """Evaluate in a daemon thread (a worker shutting down need not wait for it)."""
        with self._lock:
            if self._thread is not None:
                return
            self._state = {"status": "running"}
            self._thread = threading.Thread(target=self._run, name="helios-evaluation", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def provider(self) -> dict[str, Any]:
        with self._lock:
            state = dict(self._state)
            if state["status"] == "running":
                names = [name for name, _ in self.candidates]
                completed = names.index(self._current) if self._current is not None else 0
                state.update(current=self._current, completed=completed, total=len(names))
            return state

    def _run(self) -> None:
        def progress(name: str, _tokens: int) -> None:
            with self._lock:  # candidates run in order: those before the current one are done
                self._current = name

        try:
            reports = self._evaluate(
                self.candidates, self.prompts, progress=progress, telemetry=self.telemetry, **self.settings
            )
        except Exception as error:  # any failure must reach the HTTP caller, not die with the thread
            logger.error("evaluation failed: %s: %s", type(error).__name__, error)
            state = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
        else:
            try:
                self.on_done(reports)
            except Exception:  # publishing is a side show: the reports still go out
                logger.exception("publishing the evaluation reports failed")
            state = {"status": "done", "reports": [report.model_dump(mode="json") for report in reports]}
        with self._lock:
            self._state = state
