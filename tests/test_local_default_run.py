"""``helios run`` with its built-in config, as a new user starts it, under a minute of in-domain load.

The issue's complaint: the first selection (16 evaluated tokens, "agreement 1.000") met a
breach storm within the first 100 tokens of in-domain traffic and had to add layers before the
workload changed at all. With 256 evaluated tokens per candidate and the choice made on 95%
bounds inside the breach budget, traffic like the evaluation's must not move it: no layer
change and no switch in 60 s. Real processes (the run, its evaluation and serving workers),
each killed by PID in ``finally``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from helios_operator.local.loadgen import LoadSettings, run_load
from helios_operator.local.proxy import STATUS_PATH
from helios_operator.local.snapshot import RunStatus
from helios_operator.local.supervisor import free_port
from tests.test_local_e2e import _kill, _prompts, _state, _wait_ready

pytestmark = pytest.mark.slow

CHANGES = {"add_layers", "drop_layers", "switch_model"}
LOAD_SECONDS = 60.0


@pytest.mark.timeout(480)
def test_the_built_in_config_holds_still_under_a_minute_of_in_domain_load(tmp_path: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "helios_operator.cli",
        "run",
        "--port",
        str(port),
        "--state-file",
        str(tmp_path / "state" / "state.json"),
        "--no-dashboard",
    ]
    started: list[int] = []
    log = tmp_path / "run.log"
    try:
        began = time.monotonic()
        with log.open("wb") as output:
            run = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started.append(run.pid)
        _wait_ready(run, url, log)
        print(f"helios run with the built-in config ready after {time.monotonic() - began:.1f} s")
        state = _state(tmp_path)
        started += [worker.pid for worker in state.workers]
        [selection] = [entry for entry in state.log if entry.kind == "select"]
        assert "at 95%, n=" in selection.message, selection.message
        # 256 tokens per candidate, unless the config's time budget ran out first (a busy machine),
        # in which case the report says so and its bounds are over what it got.
        counts = [(r.model, r.num_tokens, r.is_cut_by_time_budget) for r in state.reports]
        assert all(tokens >= 256 or is_cut for _, tokens, is_cut in counts), counts

        settings = LoadSettings(
            url=url,
            rate=2.0,
            prompts=_prompts("in_domain.txt"),
            duration=LOAD_SECONDS,
            max_tokens=16,
            timeout=120.0,
        )
        report, _ = asyncio.run(run_load(settings))
        assert report.sent >= 60 and report.failed == 0, report.errors
        time.sleep(5)  # two monitoring intervals: the last tokens are scraped and judged

        status = RunStatus.model_validate(httpx.get(url + STATUS_PATH, timeout=10).json())
        state = _state(tmp_path)
        changes = [f"{entry.kind}: {entry.message}" for entry in state.log if entry.kind in CHANGES]
        assert changes == [], changes
        assert status.num_switches == 0 and status.num_layer_changes == 0 and status.num_failed == 0
        assert sum(point.num_new_tokens for point in status.series) >= 0.8 * report.num_tokens  # it did watch
        served = {r.model: r for r in state.reports}[status.model]
        assert status.evaluated is not None and status.evaluated.num_tokens == served.num_tokens
        assert status.evaluated.agreement_lower_bound >= 0.9  # the built-in floor, met at 95%

        run.terminate()
        assert run.wait(60) == 0
    finally:
        _kill(started)
