"""kube-proxy for a cluster without nodes: a Service's address that spreads requests over its ready endpoints.

A real Service sends each new connection to one of the pods its selector matches that are ready
and not terminating (EndpointSlice conditions). This router does the same for HTTP requests: it
reads the pods of a label selector from the API server every ``refresh`` seconds, and forwards
each request, streaming the answer back chunk by chunk, to the next ready endpoint in turn
(the ``helios.dev/endpoint`` annotation the pod runner writes, since pods here have no IPs of
their own). A request in flight keeps its pod until it ends, as a TCP connection would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Mapping

import aiohttp
import aiohttp.web

from helios_operator.k8s.kube import Kube
from helios_operator.k8s.manifests import ENDPOINT_ANNOTATION
from helios_operator.k8s.workers import is_ready

REFRESH_SECONDS = 0.3
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


class ServiceRouter:
    """``start()`` serves on 127.0.0.1:``port`` from a thread of its own; ``stop()`` ends it."""

    def __init__(self, kube: Kube, namespace: str, selector: Mapping[str, str], refresh: float = REFRESH_SECONDS):
        self.kube, self.namespace, self.selector, self.refresh = kube, namespace, dict(selector), refresh
        self.endpoints: list[str] = []
        self.url = ""
        self.routed: dict[str, int] = {}  # endpoint -> requests sent to it
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="service-router", daemon=True)
        self._stopping: asyncio.Event | None = None

    def start(self) -> ServiceRouter:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0.5), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def ready_endpoints(self) -> list[str]:
        selector = ",".join(f"{key}={value}" for key, value in sorted(self.selector.items()))
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        pods = self.kube.request("GET", path, query={"labelSelector": selector}).get("items", [])
        return sorted(
            p["metadata"]["annotations"][ENDPOINT_ANNOTATION]
            for p in pods
            if is_ready(p) and ENDPOINT_ANNOTATION in (p["metadata"].get("annotations") or {})
        )

    async def _watch_endpoints(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # the API server restarting, say: keep the last list
                self.endpoints = await asyncio.to_thread(self.ready_endpoints)
            await asyncio.sleep(self.refresh)

    async def _serve(self) -> str:
        self._stopping = asyncio.Event()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        app = aiohttp.web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        watcher = asyncio.create_task(self._watch_endpoints())

        async def close_on_stop() -> None:
            await self._stopping.wait()  # type: ignore[union-attr]
            watcher.cancel()
            await runner.cleanup()
            await self._session.close()

        self._closer = asyncio.create_task(close_on_stop())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def _forward(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        endpoints = self.endpoints
        if not endpoints:
            return aiohttp.web.Response(status=503, text="no ready endpoints")  # what a Service with none does
        target = endpoints[next(self._turn) % len(endpoints)]
        self.routed[target] = self.routed.get(target, 0) + 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method, target + request.path_qs, headers=headers, data=await request.read()
        ) as upstream:
            response = aiohttp.web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
