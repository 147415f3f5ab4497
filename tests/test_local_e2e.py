"""End to end: ``helios run`` as a subprocess on the built-in early-exit model, real workers.

Evaluates, selects, serves through the proxy under a shifting workload with no failed
request; then ``kill -9`` of the run (its worker must not outlive it) and a restart that
resumes the saved decision without evaluating again. Every process is killed by PID in
``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from helios_operator.local.config import packaged_prompts_path
from helios_operator.local.loadgen import LoadSettings, run_load
from helios_operator.local.proxy import STATUS_PATH
from helios_operator.local.snapshot import RunStatus
from helios_operator.local.state import RunState, load_state
from helios_operator.local.supervisor import free_port

pytestmark = pytest.mark.slow

CONFIG = """\
candidates:
  - name: ee-tiny
    model: helios-ee-tiny
accuracy:
  minAgreement: 0.9
evaluation:
  promptsPerCandidate: 2
  maxNewTokens: 4
monitoring:
  interval: 1s
  cooldown: 2s
"""
START_TIMEOUT = 150.0


def _start(tmp_path: Path, port: int, name: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "helios_operator.cli",
        "run",
        "--config",
        str(tmp_path / "helios.yaml"),
        "--port",
        str(port),
        "--state-file",
        str(tmp_path / "state" / "state.json"),
        "--no-dashboard",
    ]
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_ready(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"helios run exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"helios run not ready after {START_TIMEOUT:g} s:\n{log.read_text()[-3000:]}")


def _state(tmp_path: Path) -> RunState:
    state = load_state(tmp_path / "state" / "state.json")
    assert state is not None
    return state


def _pid_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        status = Path(f"/proc/{pid}/status")
        if status.exists() and "zombie" in status.read_text():
            return True
        time.sleep(0.2)
    return False


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _prompts(name: str) -> list[str]:
    return [line for line in packaged_prompts_path(name).read_text().splitlines() if line.strip()]


@pytest.mark.timeout(400)
def test_run_serves_a_shifting_workload_and_resumes_after_kill_9(tmp_path: Path):
    (tmp_path / "helios.yaml").write_text(CONFIG)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started: list[int] = []
    try:
        first = _start(tmp_path, port, "first")
        started.append(first.pid)
        _wait_ready(first, url, tmp_path / "first.log")
        state = _state(tmp_path)
        started += [w.pid for w in state.workers]

        settings = LoadSettings(
            url=url,
            rate=2.0,
            prompts=_prompts("in_domain.txt"),
            shift_prompts=_prompts("out_of_domain.txt"),
            shift_at=3.0,
            duration=6.0,
            max_tokens=4,
            timeout=120.0,
        )
        report, _ = asyncio.run(run_load(settings))
        assert report.sent >= 5 and report.failed == 0, report.errors
        assert report.before_shift.ok > 0 and report.after_shift.ok > 0

        # The loop read the real worker's /metrics: the traffic shows up as scraped tokens.
        status = RunStatus.model_validate(httpx.get(url + STATUS_PATH, timeout=10).json())
        assert sum(point.num_new_tokens for point in status.series) > 0
        assert {point.model for point in status.series} == {"ee-tiny"}
        assert status.num_failed == 0

        state = _state(tmp_path)
        kinds = [entry.kind for entry in state.log]
        assert "evaluate" in kinds and "select" in kinds
        assert state.phase == "Serving" and state.decision is not None and state.decision.model == "ee-tiny"
        worker_pid = state.workers[0].pid

        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert _pid_gone(worker_pid, within=40), "the worker outlived a killed helios run"

        second = _start(tmp_path, port, "second")
        started.append(second.pid)
        _wait_ready(second, url, tmp_path / "second.log")
        state = _state(tmp_path)
        started += [w.pid for w in state.workers]
        resumed_at = max(i for i, entry in enumerate(state.log) if entry.kind == "resume")
        assert "evaluate" not in [entry.kind for entry in state.log[resumed_at:]]
        assert state.log[resumed_at].message.startswith("resuming ee-tiny")
        response = httpx.post(f"{url}/v1/completions", json={"prompt": "The return", "max_tokens": 3}, timeout=60)
        assert response.status_code == 200, response.text

        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
        assert _state(tmp_path).phase == "Stopped"
    finally:
        _kill(started)
