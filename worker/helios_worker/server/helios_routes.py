"""The worker's own API under ``/v1/helios``: layer changes, state, recent prompts, evaluation.

These are what the HELIOS operator calls: ``layers`` to load more (or fewer) layers in place
on a breach storm, ``recent-prompts`` to reassess candidates on real traffic, ``evaluation``
for a worker running in evaluation mode.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from helios_worker.server.errors import APIError
from helios_worker.server.openai_routes import ERROR_RESPONSES, Worker
from helios_worker.server.protocol import LayersRequest, LayersResponse, RecentPromptsResponse, StateResponse

router = APIRouter(prefix="/v1/helios", responses=ERROR_RESPONSES)


@router.post("/layers")
async def change_layers(body: LayersRequest, worker: Worker) -> LayersResponse:
    """Grow or shrink the served decoder stack between two engine steps; requests in flight go on."""
    runner = worker.loaded_runner()
    total = runner.loaded.num_layers_total
    if not 1 <= body.layers <= total:
        raise APIError(400, f"layers: must be between 1 and {total} for this model", param="layers")
    try:
        change = await runner.change_layers(body.layers)
    except (ValueError, RuntimeError) as error:  # e.g. out of memory while growing
        raise APIError(503, f"layer change failed: {error}", code="layer_change_failed") from None
    return LayersResponse(
        layers=change.layers,
        previous_layers=change.previous_layers,
        seconds=change.seconds,
        weight_bytes=change.weight_bytes,
        bytes_read=change.bytes_read,
    )


@router.get("/state")
async def get_state(worker: Worker) -> StateResponse:
    settings, runner = worker.settings, worker.runner
    snapshot = runner.snapshot if runner is not None else None
    loaded = runner.loaded if runner is not None else None
    return StateResponse(
        status=worker.phase.value,
        model=settings.model_name,
        model_ref=settings.model_ref,
        architecture=loaded.architecture if loaded else None,
        layers_loaded=snapshot.layers_loaded if snapshot else None,
        layers_total=loaded.num_layers_total if loaded else None,
        exit_threshold=settings.exit_threshold,
        early_exit=settings.early_exit,
        min_exit_layer=settings.min_exit_layer,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue,
        max_seq_len=runner.engine.max_seq_len if runner else None,
        num_running=snapshot.num_running if snapshot else 0,
        num_waiting=snapshot.num_waiting if snapshot else 0,
        num_in_flight=runner.num_in_flight if runner else 0,
        weight_bytes=loaded.weight_bytes(snapshot.layers_loaded) if loaded and snapshot else None,
        kv_cache_bytes_per_token=runner.engine.cache.bytes_per_token if runner else None,
    )


@router.get("/recent-prompts")
async def recent_prompts(worker: Worker) -> RecentPromptsResponse:
    if worker.recent_prompts is None:
        raise APIError(
            404,
            "prompt recording is off on this worker; start it with --record-prompts N (HELIOS_RECORD_PROMPTS)",
            code="prompt_recording_off",
        )
    return RecentPromptsResponse(capacity=worker.recent_prompts.capacity, prompts=worker.recent_prompts.snapshot())


@router.get("/evaluation", response_model=Any)
async def evaluation(request: Request) -> JSONResponse:
    """The evaluation report provider's answer (``app.state.evaluation_provider``), in evaluation mode.

    Passed through as the provider returns it (an object or a list): its shape is a contract
    between the evaluation mode and the operator, not this router's.
    """
    provider = getattr(request.app.state, "evaluation_provider", None)
    if provider is None:
        raise APIError(404, "no evaluation in this worker", code="no_evaluation")
    return JSONResponse(provider())
