"""The control loop against a fake worker process: resume from a saved state, scrape its
/metrics, and carry a policy decision out (a breach storm -> more layers, in place).

The fake worker speaks the worker contract (/ready, /v1/models, /metrics, /v1/helios/layers)
and reports 60% confidence breaches whenever fewer than all 8 layers are loaded, so the
policy must add layers; it has no model, so this runs in seconds.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from helios_operator.local.config import spec_hash
from helios_operator.local.evaluate import EvaluationJob
from helios_operator.local.loop import LocalRun, RunOptions
from helios_operator.local.state import RunState, load_state, save_state
from helios_operator.local.supervisor import free_port
from helios_operator.policy import select
from helios_operator.spec import HeliosDeploymentSpec
from tests.report_factory import make_report

FAKE_WORKER = textwrap.dedent(
    """
    import json, signal, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    port, name, layers = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    crash_marker = sys.argv[4] if len(sys.argv) > 4 else None  # crash once, at the 3rd scrape
    state = {"layers": layers, "tokens": 0, "breaches": 0, "exits": [0] * 8}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    def metrics():
        # Each scrape: 50 new tokens; 30 breach (exit at L unconfident) unless all 8 layers are loaded.
        L = state["layers"]
        breaches = 30 if L < 8 else 0
        state["tokens"] += 50
        state["breaches"] += breaches
        state["exits"][0] += 50 - breaches
        state["exits"][L - 1] += breaches
        lines = [
            f'helios_generated_tokens_total{{model="{name}"}} {state["tokens"]}',
            f'helios_confidence_breaches_total{{model="{name}"}} {state["breaches"]}',
            f'helios_requests_total{{model="{name}",status="ok"}} {state["tokens"] // 10}',
            f'helios_layers_loaded{{model="{name}"}} {L}',
            f'helios_layers_total{{model="{name}"}} 8',
            "# TYPE helios_exit_layer histogram",
        ]
        running = 0
        for layer, count in enumerate(state["exits"], 1):
            running += count
            lines.append(f'helios_exit_layer_bucket{{model="{name}",le="{float(layer)}"}} {running}')
        lines.append(f'helios_exit_layer_bucket{{model="{name}",le="+Inf"}} {running}')
        lines.append(f'helios_exit_layer_count{{model="{name}"}} {running}')
        lines.append(f'helios_exit_layer_sum{{model="{name}"}} 0')
        return "\\n".join(lines) + "\\n"

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status, body, kind="application/json"):
            data = body.encode()
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/metrics" and crash_marker and state["tokens"] >= 100:
                import os, pathlib
                if not pathlib.Path(crash_marker).exists():
                    pathlib.Path(crash_marker).touch()
                    os._exit(9)
            if self.path == "/metrics":
                return self._send(200, metrics(), "text/plain")
            if self.path == "/v1/models":
                return self._send(200, json.dumps({"data": [{"id": name}]}))
            return self._send(200, "{}")

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if self.path == "/v1/helios/layers":
                state["layers"] = body["layers"]
                return self._send(200, json.dumps({"layers": body["layers"]}))
            return self._send(404, "{}")

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def _saved(tmp_path: Path, spec: HeliosDeploymentSpec) -> tuple[Path, int]:
    """A state file as a previous run leaves it, and the layers it had decided."""
    report = make_report("alpha")  # most tokens exit early: the policy loads few layers
    decision = select([report], spec, None, datetime.now(UTC))
    state_file = tmp_path / "state.json"
    save_state(state_file, RunState(spec_hash=spec_hash(spec), phase="Serving", reports=[report], decision=decision))
    return state_file, decision.layers


def _options(tmp_path: Path, state_file: Path, *extra: str) -> RunOptions:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    return RunOptions(
        state_file=state_file,
        port=free_port(),
        backoff=0.1,
        drain_timeout=2.0,
        worker_command=lambda settings, port: [
            sys.executable,
            str(script),
            str(port),
            settings.model,
            str(settings.layers),
            *extra,
        ],
    )


def _spec() -> HeliosDeploymentSpec:
    return HeliosDeploymentSpec.model_validate(
        {
            "candidates": [{"name": "alpha", "model": "test/alpha"}],
            "accuracy": {"minAgreement": 0.9},
            "evaluation": {"reassessEveryRequests": 100000},
            "monitoring": {"interval": "200ms", "cooldown": 0, "breachWindowTokens": 100, "maxBreaches": 50},
        }
    )


@pytest.mark.timeout(60)
def test_resumes_without_evaluating_and_adds_layers_on_a_breach_storm(tmp_path: Path):
    spec = _spec()
    state_file, first_layers = _saved(tmp_path, spec)
    options = _options(tmp_path, state_file)

    async def body():
        local = LocalRun(spec, options)
        stop = asyncio.Event()
        run = asyncio.create_task(local.run(stop))
        for _ in range(200):
            await asyncio.sleep(0.1)
            series = local.status().series
            if (series and series[-1].layers > first_layers) or run.done():
                break
        status = local.status()
        stop.set()
        return status, await asyncio.wait_for(run, 30)

    status, code = asyncio.run(body())
    assert code == 0
    kinds = [entry.kind for entry in status.log]
    assert "resume" in kinds and "evaluate" not in kinds
    assert "add_layers" in kinds, status.log
    added = next(entry for entry in status.log if entry.kind == "add_layers")
    assert "breach storm" in added.message
    assert status.num_layer_changes == 1 and status.layers == added.layers > first_layers
    assert status.series and status.series[-1].layers == added.layers  # the worker really changed

    saved = load_state(state_file)
    assert saved is not None and saved.phase == "Stopped" and saved.workers == []
    assert saved.decision is not None and saved.decision.layers == added.layers  # a restart resumes this


@pytest.mark.timeout(60)
def test_a_worker_crash_while_serving_is_reported_and_the_worker_restarted(tmp_path: Path):
    spec = _spec().model_copy(update={"monitoring": _spec().monitoring.model_copy(update={"max_breaches": 100})})
    state_file, _ = _saved(tmp_path, spec)
    options = _options(tmp_path, state_file, str(tmp_path / "crashed"))

    async def body():
        local = LocalRun(spec, options)
        stop = asyncio.Event()
        run = asyncio.create_task(local.run(stop))
        pids = set()
        for _ in range(200):
            await asyncio.sleep(0.1)
            status = local.status()
            if status.worker_pid:
                pids.add(status.worker_pid)
            if (status.num_worker_restarts and status.phase == "Serving" and status.worker_pid) or run.done():
                break
        pids.add(local.status().worker_pid)
        status = local.status()
        stop.set()
        return status, pids, await asyncio.wait_for(run, 30)

    status, pids, code = asyncio.run(body())
    assert code == 0
    assert (tmp_path / "crashed").exists()
    crash = next(entry for entry in status.log if entry.kind == "worker_crashed")
    assert "exited with status 9" in crash.message
    assert status.num_worker_restarts == 1 and len(pids - {None}) == 2
    assert [entry.kind for entry in status.log].count("worker_started") == 2


@pytest.mark.timeout(60)
def test_reassessment_on_recent_traffic_switches_model_by_hand_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = HeliosDeploymentSpec.model_validate(
        {
            "candidates": [{"name": "alpha", "model": "test/alpha"}, {"name": "beta", "model": "test/beta"}],
            "accuracy": {"minAgreement": 0.9},
            "evaluation": {"reassessEveryRequests": 5, "minReassessInterval": 0},
            "monitoring": {"interval": "200ms", "cooldown": 0, "maxBreaches": 100},
        }
    )
    before = [make_report("alpha", tokens_per_second=100.0), make_report("beta", tokens_per_second=10.0)]
    decision = select(before, spec, None, datetime.now(UTC))
    assert decision.model == "alpha"
    state_file = tmp_path / "state.json"
    save_state(state_file, RunState(spec_hash=spec_hash(spec), phase="Serving", reports=before, decision=decision))
    # Live traffic made beta the better candidate: the evaluation subprocess now reports so.
    after = {
        "alpha": make_report("alpha", tokens_per_second=10.0),
        "beta": make_report("beta", tokens_per_second=100.0),
    }
    reports_dir = tmp_path / "reports"
    reports_dir.mkdir()
    for name, report in after.items():
        (reports_dir / f"{name}.json").write_text(f"[{report.model_dump_json()}]")
    script = tmp_path / "fake_evaluate.py"
    script.write_text(f"import sys; print(open({str(reports_dir)!r} + '/' + sys.argv[1] + '.json').read())")
    monkeypatch.setattr(EvaluationJob, "command", lambda job: [sys.executable, str(script), job.name])

    async def body():
        local = LocalRun(spec, _options(tmp_path, state_file))
        stop = asyncio.Event()
        run = asyncio.create_task(local.run(stop))
        for _ in range(300):
            await asyncio.sleep(0.1)
            series = local.status().series
            if (series and series[-1].model == "beta") or run.done():
                break
        status = local.status()
        stop.set()
        return status, await asyncio.wait_for(run, 30)

    status, code = asyncio.run(body())
    assert code == 0
    kinds = [entry.kind for entry in status.log]
    assert kinds.index("reassess") < kinds.index("evaluate") < kinds.index("switch_model") < kinds.index("handover")
    assert status.model == "beta" and status.num_switches == 1
    assert status.series[-1].model == "beta"  # scraped from the new worker
    assert status.num_failed == 0


def test_the_serving_worker_command_carries_the_exit_histogram_and_gate():
    """helios run starts `helios serve` with its evaluation's histogram; the worker's own parser takes it."""
    import argparse

    from helios_operator.local.supervisor import WorkerSettings, serve_command
    from helios_worker.commands import serve
    from helios_worker.server.settings import ServerSettings

    settings = WorkerSettings("tiny", "helios-ee-tiny", 6, 0.8, exit_histogram=(3, 0, 5), exit_gate="saturation")
    command = serve_command(settings, 8123, "127.0.0.1", 5.0)
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    flags = vars(parser.parse_args(command[command.index("serve") + 1 :]))
    parsed = ServerSettings.from_sources(flags, {})
    assert parsed.exit_histogram == "3,0,5" and parsed.exit_gate == "saturation" and parsed.layers == 6
