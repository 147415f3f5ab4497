"""One worker subprocess: start, wait until ready, stop by draining, kill by PID when it will not.

A worker is ``helios serve`` run with this Python (so it sees the same packages). Its output
goes to a log file whose tail is quoted when it fails. On Linux each worker is tied to this
process with ``PR_SET_PDEATHSIG``: if ``helios run`` is killed with SIGKILL its workers get
SIGTERM and drain instead of living on as orphans holding memory and ports. Every wait is
bounded: a worker that dies, or is not ready in time, raises ``WorkerFailed`` and is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from helios_contracts.memory_model import MAX_NUM_SEQS
from helios_operator.local.state import WorkerRecord

READY_POLL_SECONDS = 0.25
LOG_TAIL_CHARS = 1500
_PR_SET_PDEATHSIG = 1


class WorkerFailed(RuntimeError):
    """A worker exited or did not become ready; the message quotes its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the worker binds it a moment later; a clash is retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. Best effort: only Linux has prctl.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def serve_command(settings: WorkerSettings, port: int, host: str, drain_seconds: float) -> list[str]:
    """The worker command line (the serve contract: helios serve --model --layers --exit-threshold --port).

    The candidate name is the served model name, so the worker's metrics carry it as their
    ``model`` label; the worker's own drain is shorter than our kill timeout, so it exits first.
    """
    return [
        sys.executable,
        "-m",
        "helios_operator.cli",
        "serve",
        "--model",
        settings.model_ref,
        "--served-model-name",
        settings.model,
        "--layers",
        str(settings.layers),
        "--exit-threshold",
        str(settings.exit_threshold),
        "--host",
        host,
        "--port",
        str(port),
        "--record-prompts",
        str(settings.record_prompts),
        "--drain-seconds",
        f"{drain_seconds:g}",
        *(["--shadow-fraction", f"{settings.shadow_fraction:g}"] if settings.shadow_fraction else []),
        *(["--exit-histogram", ",".join(map(str, settings.exit_histogram))] if settings.exit_histogram else []),
        *(["--exit-gate", settings.exit_gate] if settings.exit_gate != "none" else []),
        *(["--exits", settings.exits] if settings.exits else []),
        *(
            ["--memory-budget", str(settings.memory_budget), "--max-batch-size", str(MAX_NUM_SEQS)]
            if settings.memory_budget is not None
            else []
        ),
        *(["--max-seq-len", str(settings.context_tokens)] if settings.context_tokens else []),
    ]


@dataclass(frozen=True)
class WorkerSettings:
    model: str  # candidate name
    model_ref: str
    layers: int
    exit_threshold: float
    record_prompts: int = 32
    shadow_fraction: float = 0.0  # share of greedy requests kept for the shadow check (local/shadow.py)
    exit_histogram: tuple[int, ...] = ()  # the evaluation's first-confident layers: where exit tests pay
    exit_gate: str = "none"
    memory_budget: int | None = None  # spec.memoryBudget: the cache holds what fits, up to MAX_NUM_SEQS
    context_tokens: int | None = None  # spec.contextTokens: each sequence's slot
    exits: str | None = None  # calibrated exits (a helios calibrate sidecar) the worker serves with


class WorkerProcess:
    """A started worker; ``url`` is its base URL."""

    def __init__(self, process: asyncio.subprocess.Process, url: str, settings: WorkerSettings, log_path: Path):
        self.process = process
        self.url = url
        self.settings = settings
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def is_running(self) -> bool:
        return self.process.returncode is None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-LOG_TAIL_CHARS:].strip()

    async def wait_ready(self, client: httpx.AsyncClient, timeout: float) -> None:
        """Poll GET /ready until 200; WorkerFailed if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running:
                raise WorkerFailed(
                    f"worker {self.settings.model} (pid {self.pid}) exited with status {self.process.returncode} "
                    f"before it was ready; log tail:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get(f"{self.url}/ready", timeout=2.0)
                if response.status_code == 200:
                    return
            await asyncio.sleep(READY_POLL_SECONDS)
        raise WorkerFailed(
            f"worker {self.settings.model} (pid {self.pid}) not ready after {timeout:g} s; log tail:\n{self.log_tail()}"
        )

    async def stop(self, drain_timeout: float) -> int | None:
        """SIGTERM (the worker drains in-flight requests), then SIGKILL by PID after ``drain_timeout``."""
        if self.is_running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), drain_timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                await self.process.wait()
        return self.process.returncode


async def spawn(command: Sequence[str], url: str, settings: WorkerSettings, log_path: Path) -> WorkerProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    return WorkerProcess(process, url, settings, log_path)


CommandBuilder = Callable[[WorkerSettings, int], list[str]]


@dataclass
class Supervisor:
    """Starts workers with retries and exponential backoff; never waits unboundedly."""

    log_dir: Path
    client: httpx.AsyncClient
    ready_timeout: float = 180.0
    drain_timeout: float = 30.0
    attempts: int = 3
    backoff: float = 1.0
    command: CommandBuilder | None = None  # default: ``helios serve`` (tests pass a fake worker)
    on_failure: Callable[[str], Awaitable[None] | None] | None = None
    host: str = "127.0.0.1"

    async def start(self, settings: WorkerSettings) -> WorkerProcess:
        """A ready worker, or WorkerFailed after ``attempts`` tries (each reported to ``on_failure``)."""
        failures: list[str] = []
        for attempt in range(1, self.attempts + 1):
            port = free_port(self.host)
            log_path = self.log_dir / f"worker-{settings.model}-{port}.log"
            command = (
                self.command(settings, port)
                if self.command is not None
                else serve_command(settings, port, self.host, max(1.0, self.drain_timeout - 5.0))
            )
            worker = await spawn(command, f"http://{self.host}:{port}", settings, log_path)
            try:
                await worker.wait_ready(self.client, self.ready_timeout)
                return worker
            except WorkerFailed as error:
                await worker.stop(drain_timeout=2.0)
                failures.append(str(error))
                if self.on_failure is not None:
                    result = self.on_failure(f"attempt {attempt}/{self.attempts}: {error}")
                    if result is not None:
                        await result
                if attempt < self.attempts:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            except BaseException:
                # Cancelled (helios run is stopping): leave no worker behind.
                await worker.stop(drain_timeout=2.0)
                raise
        raise WorkerFailed(f"worker {settings.model} failed {self.attempts} times; last: {failures[-1]}")

    async def stop(self, worker: WorkerProcess) -> int | None:
        return await worker.stop(self.drain_timeout)


def reap_orphans(workers: list[WorkerRecord]) -> list[int]:
    """SIGKILL workers a killed run left behind (only processes that still look like ``serve``)."""
    killed = []
    for worker in workers:
        try:
            cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmdline and str(worker.url.rsplit(":", 1)[-1]).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
                killed.append(worker.pid)
    return killed
