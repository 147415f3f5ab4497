"""The worker's own API under ``/v1/helios``: layer changes, state, recent prompts, shadow check, evaluation.

These are what the HELIOS operator calls: ``layers`` to load more (or fewer) layers in place
on a breach storm, ``recent-prompts`` to reassess candidates on real traffic, ``evaluation``
for a worker running in evaluation mode. The shadow check (server/shadow.py) has three:
``shadow-samples`` (read and forget this worker's samples), ``shadow-score`` (on a worker with
every layer loaded: score samples at full depth) and ``shadow-result`` (record a score on the
worker that served the samples, for its /metrics).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from helios_contracts.memory_model import LayerChangeRefused
from helios_worker.server.errors import APIError
from helios_worker.server.openai_routes import ERROR_RESPONSES, Worker
from helios_worker.server.protocol import (
    LayersRequest,
    LayersResponse,
    RecentPromptsResponse,
    ShadowResult,
    ShadowSamplesResponse,
    ShadowScoreRequest,
    StateResponse,
)
from helios_worker.server.shadow import score_samples

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
    except LayerChangeRefused as error:  # the budget cannot hold the running requests at that depth
        raise APIError(409, f"layer change refused: {error}", code="layer_change_refused") from None
    except (ValueError, RuntimeError) as error:  # e.g. out of memory while growing
        raise APIError(503, f"layer change failed: {error}", code="layer_change_failed") from None
    return LayersResponse(
        layers=change.layers,
        previous_layers=change.previous_layers,
        seconds=change.seconds,
        weight_bytes=change.weight_bytes,
        bytes_read=change.bytes_read,
        max_num_seqs=change.max_num_seqs,
        kv_cache_capacity_tokens=change.kv_cache_capacity_tokens,
        memory_budget_bytes=change.memory_budget_bytes,
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


@router.get("/shadow-samples")
async def shadow_samples(worker: Worker) -> ShadowSamplesResponse:
    """The requests kept for the shadow check since the last read (which forgets them)."""
    if worker.shadow_sampler is None:
        raise APIError(
            404,
            "the shadow check is off on this worker; start it with --shadow-fraction F (HELIOS_SHADOW_FRACTION)",
            code="shadow_check_off",
        )
    return ShadowSamplesResponse(samples=worker.shadow_sampler.drain())


@router.post("/shadow-score")
async def shadow_score(body: ShadowScoreRequest, worker: Worker) -> ShadowResult:
    """Served tokens that equal this worker's full-depth greedy choice (teacher-forced)."""
    runner = worker.loaded_runner()
    loaded = runner.loaded
    total = loaded.num_layers_total
    if loaded.num_layers_loaded != total or runner.snapshot.layers_loaded != total:
        raise APIError(
            409,
            f"shadow scoring needs all {total} layers; this worker has {runner.snapshot.layers_loaded} loaded",
            code="not_full_depth",
        )
    vocab, max_len = loaded.config.vocab_size, runner.engine.max_seq_len
    for index, sample in enumerate(body.samples):
        ids = sample.prompt_token_ids + sample.token_ids
        if len(ids) > max_len:
            param = f"samples[{index}]"
            raise APIError(400, f"{param}: {len(ids)} tokens exceed the context of {max_len}", param=param)
        if not all(0 <= token < vocab for token in ids):
            param = f"samples[{index}]"
            raise APIError(400, f"{param}: token ids must be in 0..{vocab - 1}", param=param)
    # A plain forward on its own thread: the engine's KV cache and loop are not touched.
    score = await asyncio.to_thread(score_samples, loaded, body.samples)
    return ShadowResult(tokens=score.num_tokens, matches=score.num_matches)


@router.post("/shadow-result")
async def shadow_result(body: ShadowResult, worker: Worker) -> ShadowResult:
    """Add a score of this worker's samples to its shadow counters and agreement gauge."""
    worker.loaded_runner()
    if worker.metrics is None:
        raise APIError(503, "the worker's metrics are not ready yet", code="metrics_not_ready")
    worker.metrics.record_shadow_result(body.tokens, body.matches)
    return body


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
