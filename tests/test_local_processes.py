"""Worker and evaluation subprocesses: readiness, retries with backoff, drain, kill by PID.

The "worker" here is a small script speaking the worker's HTTP contract (no model), so
these tests exercise the process handling itself in a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from helios_operator.local import evaluate as evaluate_module
from helios_operator.local.evaluate import EvaluationFailed, EvaluationJob, evaluate_all
from helios_operator.local.supervisor import Supervisor, WorkerFailed, WorkerSettings
from tests.report_factory import make_report

FAKE_WORKER = textwrap.dedent(
    """
    import http.server, signal, sys, threading, time
    port, mode = int(sys.argv[1]), sys.argv[2]
    if mode == "crash":
        print("fake worker: out of memory", flush=True)
        sys.exit(3)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    started = time.monotonic()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ready = time.monotonic() - started > 0.5
            self.send_response(200 if ready and self.path == "/ready" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def _settings() -> WorkerSettings:
    return WorkerSettings(model="fake", model_ref="fake", layers=2, exit_threshold=0.8)


def _supervisor(tmp_path: Path, client: httpx.AsyncClient, mode: str, failures: list[str]) -> Supervisor:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    return Supervisor(
        log_dir=tmp_path / "logs",
        client=client,
        ready_timeout=10.0,
        drain_timeout=1.0,
        attempts=3,
        backoff=0.1,
        command=lambda settings, port: [sys.executable, str(script), str(port), mode],
        on_failure=failures.append,
    )


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.timeout(30)
def test_worker_becomes_ready_and_drains_on_sigterm(tmp_path: Path):
    async def body():
        async with httpx.AsyncClient() as client:
            supervisor = _supervisor(tmp_path, client, "normal", [])
            worker = await supervisor.start(_settings())
            try:
                ready = (await client.get(f"{worker.url}/ready")).status_code
                began = time.monotonic()
                code = await supervisor.stop(worker)
                return ready, code, time.monotonic() - began
            finally:
                await worker.stop(drain_timeout=1.0)

    ready, code, seconds = asyncio.run(body())
    assert ready == 200
    assert code == 0 and seconds < 1.0  # exited on SIGTERM, not killed after the timeout


@pytest.mark.timeout(30)
def test_a_worker_that_ignores_sigterm_is_killed_by_pid(tmp_path: Path):
    async def body():
        async with httpx.AsyncClient() as client:
            supervisor = _supervisor(tmp_path, client, "stubborn", [])
            worker = await supervisor.start(_settings())
            try:
                return await supervisor.stop(worker), worker.pid
            finally:
                await worker.stop(drain_timeout=1.0)

    code, pid = asyncio.run(body())
    assert code == -signal.SIGKILL
    assert not _is_alive(pid)


@pytest.mark.timeout(30)
def test_a_crashing_worker_is_retried_with_backoff_then_reported(tmp_path: Path):
    failures: list[str] = []

    async def body():
        async with httpx.AsyncClient() as client:
            began = time.monotonic()
            with pytest.raises(WorkerFailed, match="failed 3 times") as raised:
                await _supervisor(tmp_path, client, "crash", failures).start(_settings())
            return raised.value, time.monotonic() - began

    error, seconds = asyncio.run(body())
    assert len(failures) == 3 and all("exited with status 3" in f for f in failures)
    assert "out of memory" in str(error)  # the log tail says why
    assert seconds >= 0.1 + 0.2  # backoff 0.1 s, then 0.2 s


@pytest.mark.timeout(60)
def test_evaluation_crash_is_retried_and_bad_input_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    report = make_report("alpha").model_dump_json()
    counter = tmp_path / "attempts"
    script = tmp_path / "fake_evaluate.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import pathlib, sys
            counter = pathlib.Path({str(counter)!r})
            attempt = int(counter.read_text()) + 1 if counter.exists() else 1
            counter.write_text(str(attempt))
            if sys.argv[1] == "bad":
                print("unknown model", file=sys.stderr); sys.exit(2)
            if attempt == 1:
                print("Killed", file=sys.stderr); sys.exit(137)
            print("[" + {report!r} + "]")
            """
        )
    )
    monkeypatch.setattr(
        EvaluationJob, "command", lambda job: [sys.executable, str(script), job.model_ref], raising=True
    )
    messages: list[str] = []
    failures: list[str] = []

    def job(ref: str) -> EvaluationJob:
        return EvaluationJob(name="alpha", model_ref=ref, prompts_file=tmp_path, max_new_tokens=4, exit_threshold=0.8)

    reports = asyncio.run(
        evaluate_all([job("good")], attempts=3, backoff=0.05, progress=messages.append, on_failure=failures.append)
    )
    assert [r.model for r in reports] == ["alpha"]
    assert counter.read_text() == "2"
    assert any("status 137" in m and "retrying" in m for m in messages)
    assert len(failures) == 1 and "Killed" in failures[0]  # the stderr tail says why

    counter.unlink()
    with pytest.raises(EvaluationFailed, match="unknown model") as raised:
        asyncio.run(evaluate_all([job("bad")], attempts=3, backoff=0.05))
    assert not raised.value.is_retryable and counter.read_text() == "1"


@pytest.mark.timeout(30)
def test_a_hung_evaluation_is_killed_at_its_timeout(tmp_path: Path):
    async def body():
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await evaluate_module.run_command([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
        return time.monotonic() - began

    assert asyncio.run(body()) < 5


def test_evaluation_command_is_the_helios_cli_with_json(tmp_path: Path):
    job = EvaluationJob(
        name="a", model_ref="helios-ee-tiny", prompts_file=tmp_path / "p", max_new_tokens=4, exit_threshold=0.7
    )
    command = job.command()
    assert command[:4] == [sys.executable, "-m", "helios_operator.cli", "evaluate"]
    assert command[command.index("--candidates") + 1] == "a=helios-ee-tiny"
    assert "--json" in command and "--time-budget" not in command
    budgeted = EvaluationJob(
        name="a", model_ref="m", prompts_file=tmp_path / "p", max_new_tokens=4, exit_threshold=0.7, time_budget=45.0
    )
    assert budgeted.command()[budgeted.command().index("--time-budget") + 1] == "45.0"
