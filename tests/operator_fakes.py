"""Fake HELIOS workers for operator tests: the worker's HTTP contract on 127.0.0.1, state the test edits.

Each ``FakeWorker`` serves /ready, /health, /metrics (Prometheus text built from its counters),
POST /v1/helios/layers, GET /v1/helios/evaluation and GET /v1/helios/recent-prompts. All run
on one event loop in a daemon thread (``FakeWorkers``), stopped by the fixture that made them.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web

from helios_contracts.reports import EvaluationReport


@dataclass
class FakeWorker:
    model: str = "alpha"
    layers: int = 4
    layers_total: int = 8
    tokens: int = 0
    breaches: int = 0
    requests: int = 0
    is_metrics_down: bool = False
    reports: list[EvaluationReport] | None = None  # None: still evaluating
    evaluation_failure: str | None = None  # set: the evaluation failed, for this reason
    prompts: list[str] = field(default_factory=list)
    posted_layers: list[int] = field(default_factory=list)
    control_auth: set[str] = field(default_factory=set)  # Authorization headers seen on /v1/helios/*
    url: str = ""

    def generate(self, tokens: int, breaches: int, requests: int = 1) -> None:
        """Pretend ``tokens`` tokens were generated, ``breaches`` of them unconfident at the last layer."""
        self.tokens += tokens
        self.breaches += breaches
        self.requests += requests

    def metrics_text(self) -> str:
        labels = f'model="{self.model}"'
        return "\n".join(
            [
                "# TYPE helios_generated_tokens_total counter",
                f"helios_generated_tokens_total{{{labels}}} {self.tokens}",
                "# TYPE helios_confidence_breaches_total counter",
                f"helios_confidence_breaches_total{{{labels}}} {self.breaches}",
                "# TYPE helios_requests_total counter",
                f'helios_requests_total{{{labels},status="ok"}} {self.requests}',
                "# TYPE helios_layers_loaded gauge",
                f"helios_layers_loaded {self.layers}",
                "# TYPE helios_layers_total gauge",
                f"helios_layers_total {self.layers_total}",
                "",
            ]
        )

    async def _metrics(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        if self.is_metrics_down:
            return aiohttp.web.Response(status=503, text="down")
        return aiohttp.web.Response(text=self.metrics_text(), content_type="text/plain")

    async def _layers(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self.control_auth.add(request.headers.get("Authorization", ""))
        layers = int((await request.json())["layers"])
        self.posted_layers.append(layers)
        self.layers = layers
        return aiohttp.web.json_response({"layers": layers})

    def evaluation_status(self) -> dict[str, Any]:
        """What ``EvaluationService.provider`` of a real worker in evaluation mode answers."""
        if self.evaluation_failure is not None:
            return {"status": "failed", "reason": self.evaluation_failure}
        if self.reports is None:
            return {"status": "running", "current": self.model, "completed": 0, "total": 1}
        return {"status": "done", "reports": [report.model_dump(mode="json") for report in self.reports]}

    async def _evaluation(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self.control_auth.add(request.headers.get("Authorization", ""))
        return aiohttp.web.json_response(self.evaluation_status())

    async def _prompts(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"prompts": self.prompts})

    async def _ok(self, _: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"status": "ok"})

    def app(self) -> aiohttp.web.Application:
        app = aiohttp.web.Application()
        app.router.add_get("/ready", self._ok)
        app.router.add_get("/health", self._ok)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/helios/layers", self._layers)
        app.router.add_get("/v1/helios/evaluation", self._evaluation)
        app.router.add_get("/v1/helios/recent-prompts", self._prompts)
        return app


class FakeWorkers:
    """Starts fake workers on their own loop thread; ``stop`` closes them all."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[aiohttp.web.AppRunner] = []

    def start(self, **fields: Any) -> FakeWorker:
        worker = FakeWorker(**fields)
        future = asyncio.run_coroutine_threadsafe(self._serve(worker), self.loop)
        worker.url = future.result(timeout=10)
        return worker

    async def _serve(self, worker: FakeWorker) -> str:
        runner = aiohttp.web.AppRunner(worker.app())
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in self.runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
