"""A worker in evaluation mode: evaluate candidates in a background thread, report over HTTP.

The server wires it like this (``GET /v1/helios/evaluation`` returns ``provider()``)::

    service = EvaluationService.from_env()          # None unless HELIOS_EVALUATE_CANDIDATES is set
    if service is not None:
        service.start()
        app.state.evaluation_provider = service.provider

``provider()`` is one of ``{"status": "pending"}`` (before ``start``),
``{"status": "running", "current": name, "completed": k, "total": n}``,
``{"status": "done", "reports": [EvaluationReport JSON, ...]}`` or
``{"status": "failed", "reason": "..."}``. Environment (all but candidates optional):

- ``HELIOS_EVALUATE_CANDIDATES``: ``REF,NAME=REF,...`` as for ``helios evaluate --candidates``
- ``HELIOS_EVALUATE_PROMPTS_FILE``: one prompt per line (default: the packaged in-domain prompts)
- ``HELIOS_EVALUATE_MAX_NEW_TOKENS`` (32), ``HELIOS_EVALUATE_EXIT_THRESHOLD`` (0.8),
  ``HELIOS_EVALUATE_DEVICE`` (cpu)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from helios_operator.reports import EvaluationReport
from helios_worker.evaluation import evaluate_candidates, parse_candidates

ENV_PREFIX = "HELIOS_EVALUATE_"
Evaluate = Callable[..., list[EvaluationReport]]


def default_prompts_file() -> Path:
    return Path(str(resources.files("helios_worker") / "assets" / "prompts" / "in_domain.txt"))


class EvaluationService:
    def __init__(
        self,
        candidates: Sequence[tuple[str, str]],
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        exit_threshold: float = 0.8,
        device: str = "cpu",
        evaluate: Evaluate = evaluate_candidates,
    ) -> None:
        if not candidates or not prompts:
            raise ValueError("evaluation needs at least one candidate and one prompt")
        self.candidates = list(candidates)
        self.prompts = list(prompts)
        self.settings = {"max_new_tokens": max_new_tokens, "exit_threshold": exit_threshold, "device": device}
        self._evaluate = evaluate  # injectable so the threading can be tested without models
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"status": "pending"}
        self._current: str | None = None  # candidate being evaluated
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EvaluationService | None:
        """The service the environment asks for; None if no candidates are set. ValueError if malformed."""
        env = os.environ if environ is None else environ
        candidates = env.get(ENV_PREFIX + "CANDIDATES", "").strip()
        if not candidates:
            return None
        prompts_file = Path(env.get(ENV_PREFIX + "PROMPTS_FILE") or default_prompts_file())
        try:
            prompts = [line for line in prompts_file.read_text().splitlines() if line.strip()]
            max_new_tokens = int(env.get(ENV_PREFIX + "MAX_NEW_TOKENS", "32"))
            exit_threshold = float(env.get(ENV_PREFIX + "EXIT_THRESHOLD", "0.8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"bad {ENV_PREFIX}* setting: {error}") from None
        return cls(
            parse_candidates(candidates),
            prompts,
            max_new_tokens=max_new_tokens,
            exit_threshold=exit_threshold,
            device=env.get(ENV_PREFIX + "DEVICE", "cpu"),
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
            reports = self._evaluate(self.candidates, self.prompts, progress=progress, **self.settings)
        except Exception as error:  # any failure must reach the HTTP caller, not die with the thread
            state = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
        else:
            state = {"status": "done", "reports": [report.model_dump(mode="json") for report in reports]}
        with self._lock:
            self._state = state
