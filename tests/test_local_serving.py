"""The proxy and the hand-over, with real HTTP and fake in-process workers (no models).

The hand-over test sends traffic through the proxy while switching workers and checks the
order the module promises: new worker ready -> traffic moved -> old worker drained -> stopped,
and that no request failed.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn

from helios_operator.local.loadgen import LoadSettings, run_load
from helios_operator.local.proxy import Backend, Proxy, ProxyServer, rewrite_model
from helios_operator.local.serving import Serving
from helios_operator.local.supervisor import WorkerFailed, WorkerSettings, free_port

TEST_TIMEOUT = 30


def fake_worker_app(name: str, delay: float, seen_models: list[str]):
    """A worker's OpenAI surface: /v1/models and /v1/completions that take ``delay`` seconds."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/v1/models":
            payload = {"object": "list", "data": [{"id": f"{name}-id", "object": "model"}]}
        else:
            request = json.loads(body)
            seen_models.append(request.get("model"))
            await asyncio.sleep(delay)
            payload = {"model": name, "choices": [{"text": "ok"}], "usage": {"completion_tokens": 2}}
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})

    return app


class _QuietServer(uvicorn.Server):
    def capture_signals(self):
        import contextlib

        return contextlib.nullcontext()


async def serve_app(app, port: int) -> tuple[uvicorn.Server, asyncio.Task]:
    server = _QuietServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task


@dataclass
class FakeWorker:
    url: str
    settings: WorkerSettings
    server: uvicorn.Server
    task: asyncio.Task
    pid: int = 0
    is_running: bool = True
    returncode: int | None = None

    def log_tail(self) -> str:
        return ""


@dataclass
class FakeStarter:
    proxy: Proxy
    delay: float = 0.3
    fail: set[str] = field(default_factory=set)
    events: list[tuple] = field(default_factory=list)
    seen_models: list[str] = field(default_factory=list)

    async def start(self, settings: WorkerSettings) -> FakeWorker:
        self.events.append(("start", settings.model))
        if settings.model in self.fail:
            raise WorkerFailed(f"{settings.model} never became ready")
        await asyncio.sleep(0.2)  # loading weights
        port = free_port()
        server, task = await serve_app(fake_worker_app(settings.model, self.delay, self.seen_models), port)
        self.events.append(("ready", settings.model))
        return FakeWorker(f"http://127.0.0.1:{port}", settings, server, task)

    async def stop(self, worker: FakeWorker) -> int:
        backend = self.proxy.backend
        self.events.append(
            ("stop", worker.settings.model, self.proxy.in_flight(worker.url), backend.model if backend else None)
        )
        worker.server.should_exit = True
        await worker.task
        worker.is_running = False
        return 0


def _settings(model: str) -> WorkerSettings:
    return WorkerSettings(model=model, model_ref=f"ref/{model}", layers=2, exit_threshold=0.8)


async def _with_proxy(body):
    async with httpx.AsyncClient(timeout=10.0) as client:
        proxy = Proxy(client, backend_wait=5.0)
        server = ProxyServer(proxy, "127.0.0.1", free_port())
        await server.start()
        try:
            return await body(proxy, server, client)
        finally:
            await server.stop()


@pytest.mark.timeout(TEST_TIMEOUT)
def test_hand_over_moves_traffic_then_drains_and_fails_nothing():
    async def body(proxy, server, client):
        starter = FakeStarter(proxy)
        serving = Serving(proxy, starter, client, drain_timeout=10.0)
        await serving.start(_settings("old"))
        settings = LoadSettings(url=server.url, rate=20, prompts=["p"], duration=2.0, seed=1)
        load = asyncio.create_task(run_load(settings))
        await asyncio.sleep(0.7)
        await serving.hand_over(_settings("new"))
        report, results = await load
        await serving.stop()
        return starter, report, results

    starter, report, results = asyncio.run(_with_proxy(body))
    assert report.sent >= 20 and report.failed == 0, report.errors
    served_by = [r.served_by for r in results]
    assert "old" in served_by and "new" in served_by
    # Every request sent after the switch went to the new worker; the old one only had earlier ones.
    first_new = served_by.index("new")
    assert set(served_by[first_new:]) == {"new"}
    assert [e[:2] for e in starter.events] == [
        ("start", "old"),
        ("ready", "old"),
        ("start", "new"),
        ("ready", "new"),
        ("stop", "old"),
        ("stop", "new"),
    ]
    stop_old = starter.events[4]
    assert stop_old[2] == 0, "old worker stopped with requests still in flight"
    assert stop_old[3] == "new", "old worker stopped before traffic moved"
    # Clients ask for "helios"; each worker saw its own model id.
    assert set(starter.seen_models) == {"old-id", "new-id"}


@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_new_worker_that_never_gets_ready_leaves_the_old_one_serving():
    async def body(proxy, server, client):
        starter = FakeStarter(proxy, delay=0.0, fail={"broken"})
        serving = Serving(proxy, starter, client)
        await serving.start(_settings("old"))
        with pytest.raises(WorkerFailed):
            await serving.hand_over(_settings("broken"))
        response = await client.post(f"{server.url}/v1/completions", json={"prompt": "x"})
        await serving.stop()
        return response

    response = asyncio.run(_with_proxy(body))
    assert response.status_code == 200 and response.json()["model"] == "old"


@pytest.mark.timeout(TEST_TIMEOUT)
def test_refused_connection_waits_for_the_next_worker():
    """A worker that died refuses connections; the request goes to its replacement instead of failing."""

    async def body(proxy, server, client):
        proxy.set_backend(Backend(url=f"http://127.0.0.1:{free_port()}", model="dead", model_id="dead"))
        request = asyncio.create_task(client.post(f"{server.url}/v1/completions", json={"prompt": "x"}))
        await asyncio.sleep(0.3)
        port = free_port()
        replacement, task = await serve_app(fake_worker_app("fresh", 0.0, []), port)
        proxy.set_backend(Backend(url=f"http://127.0.0.1:{port}", model="fresh", model_id="fresh-id"))
        response = await request
        replacement.should_exit = True
        await task
        return response

    response = asyncio.run(_with_proxy(body))
    assert response.status_code == 200 and response.json()["model"] == "fresh"


@pytest.mark.timeout(TEST_TIMEOUT)
def test_proxy_endpoints_without_a_worker():
    async def body(proxy, server, client):
        proxy.backend_wait = 0.2
        return [
            await client.get(f"{server.url}/health"),
            await client.get(f"{server.url}/ready"),
            await client.get(f"{server.url}/v1/models"),
            await client.post(f"{server.url}/v1/completions", json={"prompt": "x"}),
        ]

    health, ready, models, completion = asyncio.run(_with_proxy(body))
    assert health.status_code == 200
    assert ready.status_code == 503
    assert models.json()["data"][0]["id"] == "helios"
    assert completion.status_code == 503
    assert completion.json()["error"]["type"] == "service_unavailable"


def test_rewrite_model_only_touches_json_objects():
    assert json.loads(rewrite_model(b'{"model": "helios", "prompt": "x"}', "w"))["model"] == "w"
    assert json.loads(rewrite_model(b'{"prompt": "x"}', "w"))["model"] == "w"
    assert rewrite_model(b"not json", "w") == b"not json"
    assert rewrite_model(b"[1]", "w") == b"[1]"


async def _sse_app(scope, receive, send):
    """Three SSE events 0.3 s apart, then [DONE]."""
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for number in range(3):
        event = json.dumps({"choices": [{"text": str(number)}]})
        await send({"type": "http.response.body", "body": f"data: {event}\n\n".encode(), "more_body": True})
        await asyncio.sleep(0.3)
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


@pytest.mark.timeout(TEST_TIMEOUT)
def test_streaming_responses_pass_through_as_they_come():
    async def body(proxy, server, client):
        port = free_port()
        backend, task = await serve_app(_sse_app, port)
        proxy.set_backend(Backend(url=f"http://127.0.0.1:{port}", model="m", model_id="m"))
        arrivals = []
        began = asyncio.get_running_loop().time()
        async with client.stream("POST", f"{server.url}/v1/completions", json={"stream": True}) as response:
            content_type = response.headers["content-type"]
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    arrivals.append((asyncio.get_running_loop().time() - began, line))
        backend.should_exit = True
        await task
        return content_type, arrivals

    content_type, arrivals = asyncio.run(_with_proxy(body))
    assert content_type.startswith("text/event-stream")
    assert [line for _, line in arrivals][-1] == "data: [DONE]"
    assert len(arrivals) == 4
    assert arrivals[0][0] < 0.25 < arrivals[-1][0]  # the first event arrived before the stream ended
