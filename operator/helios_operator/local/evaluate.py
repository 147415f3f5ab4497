"""Step 2 in worker subprocesses: ``helios evaluate --json``, one candidate at a time.

Evaluation loads models with torch, which this package must not import; a subprocess also
means a crash (out of memory, a bad checkpoint) costs one attempt, not the run. One process
per candidate gives progress as candidates finish and retries only the one that failed.
Exit status 2 is the CLI's "bad input" (an unknown model, an unreadable prompt file): trying
again cannot help, so it is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from helios_contracts.reports import EvaluationReport
from helios_operator.local.config import packaged_prompts_path
from helios_operator.spec import HeliosDeploymentSpec

_REPORTS = TypeAdapter(list[EvaluationReport])
USAGE_ERROR_STATUS = 2
STDERR_TAIL_CHARS = 1200


class EvaluationFailed(RuntimeError):
    """An evaluation that did not produce a report; ``is_retryable`` is False for bad input."""

    def __init__(self, message: str, is_retryable: bool = True) -> None:
        super().__init__(message)
        self.is_retryable = is_retryable


@dataclass(frozen=True)
class EvaluationJob:
    name: str  # candidate name
    model_ref: str
    prompts_file: Path
    max_new_tokens: int
    exit_threshold: float
    time_budget: float | None = None  # seconds of generation (the spec's evaluation.timeBudget)
    exits: str | None = None  # calibrated exits (helios calibrate's sidecar) the candidate is evaluated with

    def command(self) -> list[str]:
        budget = [] if self.time_budget is None else ["--time-budget", str(self.time_budget)]
        exits = [] if self.exits is None else ["--exits", f"{self.name}={self.exits}"]
        return [
            sys.executable,
            "-m",
            "helios_operator.cli",
            "evaluate",
            "--candidates",
            f"{self.name}={self.model_ref}",
            "--prompts",
            str(self.prompts_file),
            "--max-new-tokens",
            str(self.max_new_tokens),
            "--exit-threshold",
            str(self.exit_threshold),
            *budget,
            *exits,
            "--json",
        ]


async def run_command(command: Sequence[str], timeout: float) -> tuple[int, bytes, bytes]:
    """Run to completion within ``timeout``; on timeout (or cancellation) the process is killed by PID."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    return process.returncode or 0, stdout, stderr


async def evaluate_once(job: EvaluationJob, timeout: float) -> EvaluationReport:
    try:
        status, stdout, stderr = await run_command(job.command(), timeout)
    except TimeoutError:
        raise EvaluationFailed(f"evaluating {job.name} took longer than {timeout:g} s") from None
    tail = stderr.decode(errors="replace")[-STDERR_TAIL_CHARS:].strip()
    if status != 0:
        raise EvaluationFailed(
            f"evaluating {job.name} exited with status {status}: {tail}",
            is_retryable=status != USAGE_ERROR_STATUS,
        )
    try:
        reports = _REPORTS.validate_json(stdout)
    except ValidationError as error:
        raise EvaluationFailed(f"evaluating {job.name} printed no valid report list: {error}") from error
    if len(reports) != 1 or reports[0].model != job.name:
        raise EvaluationFailed(f"evaluating {job.name} returned reports for {[r.model for r in reports]}")
    return reports[0]


def evaluation_prompts(spec: HeliosDeploymentSpec, recent: Sequence[str] = ()) -> list[str]:
    """The last ``promptsPerCandidate`` prompts of the spec's source.

    Inline prompts when the spec has them; otherwise ``recent`` traffic (the paper's choice),
    and before any traffic the worker's built-in prompts, as the operator does.
    """
    wanted = spec.evaluation.prompts_per_candidate
    source = spec.evaluation.prompts
    prompts = list(source.inline) if source.inline is not None else [p for p in recent if p.strip()]
    if not prompts:
        prompts = [line for line in packaged_prompts_path().read_text().splitlines() if line.strip()]
    return prompts[-wanted:]


def write_prompts(path: Path, prompts: Sequence[str]) -> Path:
    """One prompt per line, as ``helios evaluate --prompts`` reads them (newlines inside become spaces)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(p.replace("\n", " ") + "\n" for p in prompts), encoding="utf-8")
    return path


Progress = Callable[[str], None]


async def evaluate_all(
    jobs: Sequence[EvaluationJob],
    *,
    timeout: float = 900.0,
    attempts: int = 3,
    backoff: float = 2.0,
    progress: Progress | None = None,
    on_failure: Progress | None = None,
) -> list[EvaluationReport]:
    """A report per job, in order; EvaluationFailed once a job has failed ``attempts`` times.

    ``progress`` hears every step; ``on_failure`` only each failed attempt that is retried.
    """
    say = progress or (lambda _message: None)
    reports = []
    for number, job in enumerate(jobs, 1):
        for attempt in range(1, attempts + 1):
            say(f"evaluating {job.name} ({number}/{len(jobs)}), attempt {attempt}/{attempts}")
            try:
                reports.append(await evaluate_once(job, timeout))
                break
            except EvaluationFailed as error:
                if not error.is_retryable or attempt == attempts:
                    raise
                retry = f"{error}; retrying in {backoff * 2 ** (attempt - 1):g} s"
                say(retry)
                if on_failure is not None:
                    on_failure(retry)
                await asyncio.sleep(backoff * 2 ** (attempt - 1))
        say(f"evaluated {job.name} ({number}/{len(jobs)})")
    return reports
