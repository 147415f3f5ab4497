"""`helios serve` as a process: bad settings exit 2, and SIGTERM drains a running stream then exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from helios_operator.cli import main
from tests.test_server_harness import sse_events, wait_ready

PROCESS_TIMEOUT_SECONDS = 120


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--model", "m", "--exit-threshold", "2"], {}, "--exit-threshold: Input should be less than or equal to 1"),
        (["--model", "m"], {"HELIOS_PORT": "http"}, "HELIOS_PORT: Input should be a valid integer"),
        (["--model", "m", "--port", "70000"], {"HELIOS_PORT": "1"}, "--port:"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(monkeypatch, capsys, argv, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"helios serve: error: {expected}")
    assert err.count("\n") == 1


def test_unknown_model_exits_2_after_the_server_started(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("HELIOS_MODEL", raising=False)
    argv = ["serve", "--model", str(tmp_path / "nope"), "--host", "127.0.0.1", "--port", "0", "--log-level", "error"]
    assert main(argv) == 2
    assert "not found" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_lets_the_running_stream_finish_then_exits_0(tiny_model):
    model = tiny_model("llama", max_position_embeddings=1024)  # room for a long stream
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "helios_operator.cli", "serve", "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--drain-seconds", "60", "--torch-threads", "1", "--log-level", "warning"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(base, timeout=PROCESS_TIMEOUT_SECONDS)
        body = {"prompt": "the quick brown fox", "max_tokens": 300, "ignore_eos": True, "stream": True}
        with (
            httpx.Client(base_url=base, timeout=PROCESS_TIMEOUT_SECONDS) as client,
            client.stream("POST", "/v1/completions", json=body) as response,
        ):
            events = sse_events(response.iter_lines())
            next(events)
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while client.get("/ready").status_code != 503 and time.monotonic() < deadline:
                time.sleep(0.02)
            # Draining: still listening, not ready, refusing new work, finishing the stream.
            assert client.get("/ready").json()["status"] == "draining"
            refused = client.post("/v1/completions", json={"prompt": "late"})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "worker_draining"
            assert process.poll() is None
            rest = list(events)
        assert rest[-1] == "[DONE]"
        assert rest[-2]["usage"]["completion_tokens"] == 300
        assert rest[-3]["choices"][0]["finish_reason"] == "length"
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        output, _ = process.communicate(timeout=10)
        print(output)


@pytest.mark.timeout(PROCESS_TIMEOUT_SECONDS + 30)
def test_control_port_serves_the_control_api_and_nothing_else(tiny_model):
    """With --control-port, /v1/helios/* answers there only and the OpenAI API on --port only."""
    model = tiny_model("llama")
    port, control_port = free_port(), free_port()
    serving, control = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{control_port}"
    command = [sys.executable, "-m", "helios_operator.cli", "serve", "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--control-port", str(control_port), "--torch-threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HELIOS_CONTROL_TOKEN": "secret"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    auth = {"Authorization": "Bearer secret"}
    try:
        wait_ready(serving, timeout=PROCESS_TIMEOUT_SECONDS)
        with httpx.Client(timeout=30) as client:
            completion = client.post(f"{serving}/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            assert completion.status_code == 200
            assert client.get(f"{serving}/metrics").status_code == 200
            # The control API is not on the serving port, even with the token.
            refused = client.get(f"{serving}/v1/helios/state", headers=auth)
            assert refused.status_code == 404 and str(control_port) in refused.json()["error"]["message"]
            state = client.get(f"{control}/v1/helios/state", headers=auth)
            assert state.status_code == 200 and state.json()["layers_loaded"] == 4
            changed = client.post(f"{control}/v1/helios/layers", json={"layers": 2}, headers=auth)
            assert changed.status_code == 200
            assert client.get(f"{control}/v1/helios/state", headers=auth).json()["layers_loaded"] == 2
            assert client.get(f"{control}/v1/helios/state").status_code == 401  # the token still counts
            # Nothing but the control API (and liveness) on the control port.
            assert client.post(f"{control}/v1/completions", json={"prompt": "hi"}).status_code == 404
            assert client.get(f"{control}/metrics").status_code == 404
            assert client.get(f"{control}/health").status_code == 200
    finally:
        process.kill()
        output, _ = process.communicate(timeout=10)
        print(output)


def test_control_port_must_differ_from_the_port(capsys):
    assert main(["serve", "--model", "m", "--port", "8000", "--control-port", "8000"]) == 2
    assert "control_port must differ from port" in capsys.readouterr().err
