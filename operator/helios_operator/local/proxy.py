"""The one stable OpenAI endpoint of ``helios run``: a small async reverse proxy.

Clients talk to the proxy; the proxy forwards to whichever worker serves now. A switch is
``set_backend(new)``: requests that started on the old worker finish there (they hold their
backend), new ones go to the new worker, and ``wait_drained(old)`` tells the caller when the
old worker has no request left through the proxy. Clients see one model name (``served_name``)
across switches: the proxy writes the current worker's model id into each request body.

A worker that refuses the connection has not seen the request, so the proxy waits (bounded)
for another backend and sends it there; that is what keeps a crash-and-restart from failing
requests. Once a response has started it is streamed through as it comes (SSE included) and
cannot be retried. The proxy's own paths: ``/health``, ``/ready`` (200 once a worker serves),
``/v1/models`` and ``/helios/status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]

STATUS_PATH = "/helios/status"
# Hop-by-hop headers (RFC 9110 7.6.1) describe one connection, not the message; host and
# content-length are recomputed for the upstream request.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"}
    | {"upgrade", "host", "content-length"}
)
_RESPONSE_DROP = _HOP_BY_HOP - {"content-length"}
DRAIN_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Backend:
    url: str
    model: str  # candidate name, for status and errors
    model_id: str  # the id the worker's API expects in "model"


def error_body(status: int, message: str, error_type: str) -> bytes:
    """The OpenAI error shape, as the worker's own errors are."""
    return json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": status}}).encode()


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def rewrite_model(body: bytes, model_id: str) -> bytes:
    """The request body with ``model`` set to the current worker's id; non-JSON bodies unchanged."""
    try:
        document = json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body
    if not isinstance(document, dict):
        return body
    document["model"] = model_id
    return json.dumps(document).encode()


class Proxy:
    """The ASGI app. ``status`` returns the JSON served at /helios/status."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        served_name: str = "helios",
        status: Callable[[], Any] | None = None,
        backend_wait: float = 60.0,
    ) -> None:
        self.client = client
        self.served_name = served_name
        self.status = status or (lambda: {})
        self.backend_wait = backend_wait
        self.backend: Backend | None = None
        self._changed = asyncio.Event()
        self._in_flight: dict[str, int] = {}
        self.num_forwarded = 0
        self.num_failed = 0

    # --- control ------------------------------------------------------------------------
    def set_backend(self, backend: Backend | None) -> None:
        """Send new requests to ``backend`` (None: hold them until one is set, up to ``backend_wait``)."""
        self.backend = backend
        self._changed.set()
        self._changed = asyncio.Event()

    def in_flight(self, url: str) -> int:
        return self._in_flight.get(url, 0)

    async def wait_drained(self, url: str, timeout: float) -> bool:
        """True once no request through the proxy is on ``url``; False if ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while self.in_flight(url) > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        return True

    async def _next_backend(self, exclude: str | None) -> Backend | None:
        deadline = time.monotonic() + self.backend_wait
        while self.backend is None or self.backend.url == exclude:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.backend

    # --- ASGI ---------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/health":
            return await _send_json(send, 200, {"status": "ok"})
        if method == "GET" and path == "/ready":
            ready = self.backend is not None
            return await _send_json(send, 200 if ready else 503, {"ready": ready})
        if method == "GET" and path == STATUS_PATH:
            return await _send_json(send, 200, self.status())
        if method == "GET" and path == "/v1/models":
            return await _send_json(send, 200, self._models())
        await self._forward(scope, receive, send)

    def _models(self) -> dict[str, Any]:
        served_by = self.backend.model if self.backend is not None else None
        return {
            "object": "list",
            "data": [{"id": self.served_name, "object": "model", "owned_by": "helios", "root": served_by}],
        }

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name.decode("latin-1").lower() not in _HOP_BY_HOP
        ]
        target = scope["path"] + (f"?{scope['query_string'].decode()}" if scope.get("query_string") else "")
        refused: str | None = None
        for _ in range(3):
            backend = await self._next_backend(exclude=refused)
            if backend is None:
                self.num_failed += 1
                message = "no worker is serving yet" if refused is None else "the worker is restarting; try again"
                return await _send_raw(send, 503, error_body(503, message, "service_unavailable"))
            content = rewrite_model(body, backend.model_id) if scope["method"] == "POST" else body
            request = self.client.build_request(scope["method"], backend.url + target, headers=headers, content=content)
            self._in_flight[backend.url] = self.in_flight(backend.url) + 1
            try:
                try:
                    response = await self.client.send(request, stream=True)
                except httpx.ConnectError:
                    refused = backend.url  # never reached the worker: safe to send elsewhere
                    continue
                except httpx.HTTPError as error:
                    self.num_failed += 1
                    return await _send_raw(
                        send, 502, error_body(502, f"worker {backend.model}: {error}", "bad_gateway")
                    )
                self.num_forwarded += 1
                await self._stream(response, send)
                return
            finally:
                self._in_flight[backend.url] -= 1
        self.num_failed += 1
        await _send_raw(send, 503, error_body(503, "no worker accepted the request", "service_unavailable"))

    async def _stream(self, response: httpx.Response, send: Send) -> None:
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.multi_items()
            if name.lower() not in _RESPONSE_DROP
        ]
        try:
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            try:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError:
                # The worker died mid-response; the status is already sent, so end the body.
                self.num_failed += 1
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _send_raw(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_json(send: Send, status: int, document: Any) -> None:
    await _send_raw(send, status, json.dumps(document, default=str).encode())


class _Server(uvicorn.Server):
    # helios run handles SIGINT/SIGTERM itself (drain the workers, save state, then stop the
    # proxy); uvicorn's own handlers would stop the proxy first and fail requests in flight.
    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class ProxyServer:
    """The proxy listening on ``host:port`` inside the current event loop."""

    def __init__(self, app: Proxy, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", access_log=False)
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self.url = f"http://{host}:{port}"

    async def start(self, timeout: float = 10.0) -> None:
        self._task = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._task.done():
                with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind, having logged why
                    self._task.result()
                raise OSError(f"proxy cannot listen on {self.url} (is the port in use?)")
            if time.monotonic() > deadline:
                raise OSError(f"proxy on {self.url} did not start in {timeout:g} s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 10.0)
