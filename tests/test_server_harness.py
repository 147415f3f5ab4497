"""Helpers for the server tests: a real uvicorn server in a thread, a runner recorder, SSE parsing.

(A module of helpers, named to sit with the server tests; it holds no tests itself.)
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from helios_worker.server.app import create_app
from helios_worker.server.runner import EngineRunner
from helios_worker.server.settings import ServerSettings
from helios_worker.server.state import load_engine
from helios_worker.stats import RequestOutput, StepStats

READY_TIMEOUT_SECONDS = 60.0


@dataclass
class Recorder:
    """Plugs into the runner's callbacks; can slow or hold the engine loop to make timing certain."""

    steps: list[StepStats] = field(default_factory=list)
    done: list[tuple[str, str, int]] = field(default_factory=list)  # (request id, status, tokens)
    layer_changes: list[tuple[int, int]] = field(default_factory=list)
    step_delay: float = 0.0
    gate: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    def attach(self, runner: EngineRunner) -> None:
        runner.on_step = self.on_step
        runner.on_request_done = self.on_request_done
        runner.on_layers_changed = self.on_layers_changed

    def on_step(self, outputs: list[RequestOutput], stats: StepStats) -> None:
        self.steps.append(stats)
        self.gate.wait(30)
        if self.step_delay:
            time.sleep(self.step_delay)

    def on_request_done(self, output: RequestOutput, status: str) -> None:
        self.done.append((output.request_id, status, len(output.token_ids)))

    def on_layers_changed(self, loaded: int, total: int) -> None:
        self.layer_changes.append((loaded, total))

    def status_of(self, request_id: str) -> tuple[str, int] | None:
        for done_id, status, tokens in self.done:
            if done_id == request_id:
                return status, tokens
        return None


@dataclass
class LiveServer:
    base_url: str
    app: Any
    recorder: Recorder

    @property
    def worker(self) -> Any:
        return self.app.state.worker


def wait_ready(base_url: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{base_url} not ready after {timeout} s")


@contextlib.contextmanager
def live_server(
    settings: ServerSettings, *, ready: bool = True, loader: Callable[[ServerSettings], Any] = load_engine
) -> Iterator[LiveServer]:
    """The app on a real socket (streaming, disconnects and lifespan behave as in production)."""
    app = create_app(settings, loader=loader)
    recorder = Recorder()
    app.state.worker.runner_hooks.append(recorder.attach)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        if ready:
            wait_ready(base_url)
        yield LiveServer(base_url, app, recorder)
    finally:
        recorder.gate.set()
        server.should_exit = True
        thread.join(15)
        sock.close()


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any] | str]:
    """Parsed ``data:`` payloads of an SSE stream; ``"[DONE]"`` as a string."""
    for line in lines:
        if not line.startswith("data: "):
            continue
        payload = line.removeprefix("data: ")
        yield payload if payload == "[DONE]" else json.loads(payload)
