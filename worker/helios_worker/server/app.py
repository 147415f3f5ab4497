"""The worker's FastAPI app: probes, metrics, and the OpenAI and HELIOS routers.

``create_app`` builds everything from one ServerSettings. In serving mode the worker's
``WorkerMetrics`` are wired to the runner (telemetry.py); in evaluation mode
(``settings.mode == "evaluate"``) an ``EvaluationService`` runs instead of a model, its
``provider`` answers ``GET /v1/helios/evaluation`` and its reports reach ``/metrics`` when done.
Hooks for other parts of the worker:

- ``app.state.worker.runner_hooks``: callables ``hook(runner)`` run when the model has loaded,
  before the engine starts; set the runner's ``on_step`` / ``on_request_done`` /
  ``on_layers_changed`` callbacks there (see runner.py for their signatures). The metrics hook
  runs first: a later hook that replaces a callback (rather than wrapping it) unhooks the metrics.
- ``app.state.registry``: the prometheus ``CollectorRegistry`` that ``GET /metrics`` exposes;
  the worker's own metrics are registered on it once the model has loaded.
- ``app.state.evaluation_provider``: ``Callable[[], dict] | None``; when set,
  ``GET /v1/helios/evaluation`` returns its result (404 otherwise). Set in evaluation mode.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from helios_worker.server import helios_routes, openai_routes
from helios_worker.server.errors import install_error_handlers
from helios_worker.server.middleware import BearerAuthMiddleware, BodyLimitMiddleware, PortSplitMiddleware
from helios_worker.server.protocol import HealthResponse, ReadyResponse
from helios_worker.server.settings import ServerSettings
from helios_worker.server.state import Phase, WorkerState, load_engine
from helios_worker.server.telemetry import publish_evaluation_when_done, serving_metrics_hook

if TYPE_CHECKING:
    from helios_worker.engine import Engine
    from helios_worker.evaluation_service import EvaluationService


def create_app(
    settings: ServerSettings,
    *,
    registry: CollectorRegistry | None = None,
    loader: Callable[[ServerSettings], Engine] = load_engine,
    evaluation: EvaluationService | None = None,
) -> FastAPI:
    """The app; in evaluation mode ``evaluation`` defaults to the one ``os.environ`` describes."""
    registry = registry if registry is not None else CollectorRegistry()
    worker = WorkerState(settings, registry, loader=loader)
    if worker.is_evaluation_mode:
        if evaluation is None:
            from helios_worker.evaluation_service import EvaluationService

            evaluation = EvaluationService.from_settings(settings, os.environ)
        publish_evaluation_when_done(evaluation, settings, registry)
    elif evaluation is not None:
        raise ValueError("an evaluation service needs settings.mode == 'evaluate'")
    else:
        worker.runner_hooks.append(serving_metrics_hook(registry, worker.use_metrics, vllm=settings.vllm_metrics))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if evaluation is not None:
            worker.start_evaluating(evaluation)
        else:
            worker.start_loading()  # in the background: /health answers during a long load
        yield
        worker.shutdown()

    app = FastAPI(
        title="HELIOS worker",
        summary="OpenAI-compatible early-exit LLM serving, with in-place layer changes.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.registry = registry
    app.state.evaluation_provider = evaluation.provider if evaluation is not None else None
    install_error_handlers(app)
    # Starlette runs the last added middleware first: the port split, auth, then the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key or settings.control_token:
        app.add_middleware(BearerAuthMiddleware, api_key=settings.api_key, control_token=settings.control_token)
    if settings.control_port is not None:
        app.add_middleware(PortSplitMiddleware, control_port=settings.control_port)
    app.include_router(openai_routes.router)
    app.include_router(helios_routes.router)

    @app.get("/health")
    async def health() -> HealthResponse:
        """The process is alive (also while the model loads)."""
        return HealthResponse()

    @app.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def ready() -> ReadyResponse | JSONResponse:
        """200 only when the model is loaded (or the evaluation runs) and the worker is not draining."""
        body = ReadyResponse(status=worker.phase.value, reason=worker.reason)
        if worker.phase != Phase.READY:
            return JSONResponse(body.model_dump(), status_code=503)
        return body

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format, from ``app.state.registry``."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
