"""The worker's wiring, end to end: real ``helios serve`` processes against the contracts others read.

- Serving: every ``helios serve`` exports the worker metrics, and the numbers agree with what
  the API told the client (tokens, exit layers, layer changes).
- Evaluation mode: a worker started with exactly the environment of the operator's evaluation
  pod evaluates its candidate, and the operator's own fetch reads the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helios_contracts.reports import EvaluationReport
from helios_operator.k8s import manifests, workers
from helios_operator.k8s.scrape import parse_metrics
from helios_operator.spec import HeliosDeploymentSpec
from helios_worker.gpu import GpuTelemetry
from helios_worker.server.settings import ServerSettings
from tests.operator_fakes import FakeWorkers
from tests.report_factory import make_report
from tests.test_server_harness import live_server

STARTUP_TIMEOUT_SECONDS = 45.0
EVALUATION_TIMEOUT_SECONDS = 45.0
PROMPTS = ["the quick brown fox", "def add(a, b):", "kubernetes operators reconcile"]
OWNER = {"apiVersion": "helios.dev/v1alpha1", "kind": "HeliosDeployment"}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def worker_process(command: list[str], env: Mapping[str, str]) -> Iterator[subprocess.Popen[str]]:
    """A worker process, killed by PID (with its output printed for a failing test) however the test ends."""
    process = subprocess.Popen(command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=10)
        print(output)


def wait_ready(process: subprocess.Popen[str], base: str) -> None:
    """Until ``/ready`` says 200; fails at once if the worker exits instead."""

    def ready() -> bool:
        assert process.poll() is None, f"the worker exited with {process.returncode}"
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{base}/ready", timeout=2).status_code == 200
        return False

    wait_for(ready, f"{base}/ready", timeout=STARTUP_TIMEOUT_SECONDS)


def base_env() -> dict[str, str]:
    """This environment without any HELIOS_* variable: the worker sees only what the test gives it."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("HELIOS_")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def wait_for(check: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def samples(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``/metrics`` as (sample name, labels) -> value."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


# --- serving --------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_serve_exports_metrics_that_match_the_api(tiny_model) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "helios_operator.cli", "serve", "--model", str(tiny_model("llama"))]
    command += ["--served-model-name", "tiny", "--layers", "2", "--exit-threshold", "0.5", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--torch-threads", "1", "--log-level", "warning"]
    with worker_process(command, base_env()) as process:
        wait_ready(process, base)
        body = {"model": "tiny", "prompt": "the quick brown fox", "max_tokens": 7, "ignore_eos": True}
        completion = httpx.post(f"{base}/v1/completions", json=body, timeout=30).json()
        num_tokens = completion["usage"]["completion_tokens"]
        assert num_tokens == 7

        # The runner delivers a step's tokens before its callbacks run: the count may trail by a step.
        def counted() -> Any:
            metrics = samples(base)
            return value(metrics, "helios_requests_total", model="tiny", status="ok") == 1 and metrics

        metrics = wait_for(counted, "the request in the metrics", timeout=5)
        assert value(metrics, "helios_generated_tokens_total", model="tiny") == num_tokens
        assert value(metrics, "helios_exit_layer_count", model="tiny") == num_tokens
        assert value(metrics, "helios_exit_layer_bucket", model="tiny", le="4.0") == num_tokens
        assert value(metrics, "helios_exit_layer_bucket", model="tiny", le="2.0") == num_tokens  # 2 loaded
        assert value(metrics, "helios_prompt_tokens_total", model="tiny") == completion["usage"]["prompt_tokens"]
        assert value(metrics, "helios_layers_loaded", model="tiny") == 2
        assert value(metrics, "helios_layers_total", model="tiny") == 4
        assert value(metrics, "helios_exit_threshold", model="tiny") == 0.5
        assert value(metrics, "helios_confidence_breaches_total", model="tiny") is not None
        assert value(metrics, "helios_gpu_available", model="tiny") == float(GpuTelemetry.open().available)

        # What the operator's scrape reads from the same text.
        scraped = parse_metrics(httpx.get(f"{base}/metrics", timeout=5).text, datetime.now(UTC))
        counters = scraped.counters
        assert (scraped.model, counters.layers, counters.layers_total, counters.tokens) == ("tiny", 2, 4, num_tokens)

        grown = httpx.post(f"{base}/v1/helios/layers", json={"layers": 4}, timeout=30)
        assert grown.status_code == 200 and grown.json()["layers"] == 4
        assert value(samples(base), "helios_layers_loaded", model="tiny") == 4
        httpx.post(f"{base}/v1/helios/layers", json={"layers": 3}, timeout=30).raise_for_status()
        assert value(samples(base), "helios_layers_loaded", model="tiny") == 3


# --- evaluation mode ------------------------------------------------------------------------------
def evaluation_pod_env(
    model_dir: Path, port: int, control_port: int, mount: Path
) -> tuple[HeliosDeploymentSpec, dict[str, str]]:
    """The container env of the operator's evaluation pod for a one-candidate spec, as a process env."""
    spec = HeliosDeploymentSpec.model_validate(
        {
            "candidates": [{"name": "tiny", "model": str(model_dir)}],
            "exit": {"threshold": 0.7},
            "evaluation": {"maxNewTokens": 4, "prompts": {"inline": PROMPTS}},
        }
    )
    owner = {**OWNER, "metadata": {"name": "demo", "namespace": "default", "uid": "uid-1"}}
    pod = manifests.build_evaluation_pod(owner, spec, spec.candidates[0], 1, PROMPTS, "helios-worker:test")
    [container] = pod["spec"]["containers"]
    assert container["command"] == ["helios-worker", "serve"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    assert env["HELIOS_MODE"] == "evaluate"
    # What the kubelet provides: the ports are the test's, the model volume a temporary directory.
    assert (env["HELIOS_PORT"], env["HELIOS_CONTROL_PORT"]) == ("8000", "8001")
    env["HELIOS_PORT"], env["HELIOS_CONTROL_PORT"] = str(port), str(control_port)
    env["HF_HOME"] = env["HF_HOME"].replace(manifests.MODEL_MOUNT, str(mount), 1)
    return spec, env


@pytest.mark.timeout(120)
def test_worker_with_the_operator_evaluation_pod_env_reports_to_the_operator(tiny_model, tmp_path) -> None:
    port, control_port = free_port(), free_port()
    base, control = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{control_port}"
    spec, pod_env = evaluation_pod_env(tiny_model("llama"), port, control_port, tmp_path)
    command = [sys.executable, "-m", "helios_operator.cli", "serve"]  # the pod's command
    with worker_process(command, {**base_env(), **pod_env, "HELIOS_HOST": "127.0.0.1"}) as process:
        wait_ready(process, base)
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
        refused = httpx.post(f"{base}/v1/completions", json={"prompt": "hi"}, timeout=5)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "evaluation_mode"
        assert refused.json()["error"]["type"] == "service_unavailable_error"

        assert httpx.get(f"{base}/v1/helios/evaluation", timeout=5).status_code == 404  # on the control port only

        def finished() -> Any:
            document = httpx.get(f"{control}/v1/helios/evaluation", timeout=5).json()
            assert document["status"] in {"running", "done"}, document
            return document["status"] == "done" and document

        document = wait_for(finished, "the evaluation", timeout=EVALUATION_TIMEOUT_SECONDS)
        [report] = [EvaluationReport.model_validate(item) for item in document["reports"]]
        assert (report.model, report.model_ref, report.num_prompts) == ("tiny", str(tiny_model("llama")), 3)
        assert report.exit_threshold == spec.exit.threshold and report.num_layers_total == 4

        status = asyncio.run(fetch_evaluation(control))
        assert status.status == "done" and status.reports == [report]

        metrics = samples(base)
        for layer in range(1, 5):
            assert value(metrics, "helios_evaluation_agreement", model="tiny", layer=str(layer)) == pytest.approx(
                report.agreement_by_layer[layer - 1]
            )
        assert value(metrics, "helios_evaluation_agreement", model="tiny", layer="4") == 1.0
        assert value(metrics, "helios_evaluation_tokens_per_second", model="tiny") == report.tokens_per_second


async def fetch_evaluation(base: str, transport: httpx.AsyncBaseTransport | None = None) -> workers.EvaluationStatus:
    async with httpx.AsyncClient(timeout=5, transport=transport) as client:
        return await workers.fetch_evaluation(client, base)


@pytest.mark.timeout(60)
def test_a_failed_evaluation_reaches_the_operator_with_its_reason(tmp_path, monkeypatch) -> None:
    for name in ("HELIOS_EVAL_CANDIDATES", "HELIOS_EVAL_PROMPTS", "HELIOS_MAX_NEW_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    missing = str(tmp_path / "missing")
    settings = ServerSettings(mode="evaluate", model=missing, served_model_name="gone")
    with live_server(settings) as server:  # ready at once: the evaluation runs in the background

        def failed() -> Any:
            return server.app.state.evaluation_provider()["status"] == "failed"

        wait_for(failed, "the evaluation to fail", timeout=30)
        status = asyncio.run(fetch_evaluation(server.base_url))
        assert status.status == "failed" and missing in (status.reason or "")
        assert httpx.get(f"{server.base_url}/ready", timeout=5).status_code == 200  # the reason stays readable


@pytest.mark.parametrize(
    "document",
    [
        [make_report("alpha").model_dump(mode="json")],  # the old bare list
        {"status": "done", "reports": []},
        {"status": "finished"},
    ],
)
def test_the_operator_rejects_what_breaks_the_evaluation_contract(document: Any) -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, json=document))
    with pytest.raises(workers.WorkerError, match="not an evaluation status"):
        asyncio.run(fetch_evaluation("http://worker", transport))


def test_fake_workers_speak_the_evaluation_contract() -> None:
    fakes = FakeWorkers()
    try:
        running = fakes.start()
        done = fakes.start(reports=[make_report("alpha")])
        failed = fakes.start(evaluation_failure="ModelLoadError: no such model")
        assert asyncio.run(fetch_evaluation(running.url)).status == "running"
        assert [r.model for r in asyncio.run(fetch_evaluation(done.url)).reports] == ["alpha"]
        assert asyncio.run(fetch_evaluation(failed.url)).reason == "ModelLoadError: no such model"
    finally:
        fakes.stop()
