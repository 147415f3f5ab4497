"""OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

Streams are server-sent events: one ``data: {chunk}`` per text delta, a chunk with the
finish reason, a last chunk with ``choices: []`` and the ``usage`` (and ``helios`` stats),
then ``data: [DONE]``. An error after the stream started is sent as ``data: {"error": ...}``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from helios_worker.server.errors import APIError, sse_error_event
from helios_worker.server.generation import Generation, unless_disconnected
from helios_worker.server.prompts import PreparedPrompt, chat_prompt, completion_prompt, sampling_params
from helios_worker.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from helios_worker.server.state import WorkerState

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 503)
}

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


def worker_state(request: Request) -> WorkerState:
    return request.app.state.worker


Worker = Annotated[WorkerState, Depends(worker_state)]


def _check_model(requested: str | None, worker: WorkerState) -> None:
    served = worker.settings.model_name
    if requested is not None and requested != served:
        raise APIError(
            404,
            f"model {requested!r} is not served here; this worker serves {served!r}",
            param="model",
            code="model_not_found",
        )


def _start(
    worker: WorkerState, body: CompletionRequest | ChatCompletionRequest, prepare: Callable[..., PreparedPrompt]
) -> Generation:
    """Everything up to submitting: any 4xx/429/503 happens here, before a response starts."""
    _check_model(body.model, worker)
    runner = worker.serving_runner()
    loaded = runner.loaded
    prompt = prepare(loaded.tokenizer, loaded.config.vocab_size)
    params = sampling_params(body, len(prompt.token_ids), runner.engine.max_seq_len)
    worker.record_prompt(prompt.text)
    on_finished = worker.offer_shadow_sample if params.is_greedy else None  # see server/shadow.py
    generation = Generation(runner, loaded.tokenizer, prompt.token_ids, params, body.stop_strings, on_finished)
    generation.start()
    return generation


def _sse(chunk: BaseModel) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"


def _event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    async def guarded() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except APIError as error:
            yield sse_error_event(error)
        yield "data: [DONE]\n\n"

    return StreamingResponse(guarded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/models")
async def list_models(worker: Worker) -> ModelList:
    runner = worker.runner
    max_len = runner.engine.max_seq_len if runner is not None else worker.settings.max_seq_len
    card = ModelCard(id=worker.settings.model_name, created=0, root=worker.settings.model_ref, max_model_len=max_len)
    return ModelList(data=[card])


@router.post("/completions", response_model=CompletionResponse)
async def create_completion(
    body: CompletionRequest, request: Request, worker: Worker
) -> CompletionResponse | StreamingResponse:
    generation = _start(worker, body, lambda tokenizer, vocab: completion_prompt(body, tokenizer, vocab))
    model, created = worker.settings.model_name, int(time.time())

    def response(choices: list[CompletionChoice], with_totals: bool) -> CompletionResponse:
        return CompletionResponse(
            id=generation.request_id,
            created=created,
            model=model,
            choices=choices,
            usage=generation.usage() if with_totals else None,
            helios=generation.helios_stats() if with_totals else None,
        )

    if not body.stream:
        text = await unless_disconnected(request, generation.collect())
        return response([CompletionChoice(text=text, finish_reason=generation.finish_reason)], True)

    async def events() -> AsyncIterator[str]:
        async for delta in generation.deltas():
            yield _sse(response([CompletionChoice(text=delta)], False))
        yield _sse(response([CompletionChoice(text="", finish_reason=generation.finish_reason)], False))
        yield _sse(response([], True))

    return _event_stream(events())


@router.post("/chat/completions", response_model=ChatCompletionResponse)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, worker: Worker
) -> ChatCompletionResponse | StreamingResponse:
    generation = _start(worker, body, lambda tokenizer, _vocab: chat_prompt(body, tokenizer))
    model, created = worker.settings.model_name, int(time.time())

    if not body.stream:
        text = await unless_disconnected(request, generation.collect())
        choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=generation.finish_reason)
        return ChatCompletionResponse(
            id=generation.request_id,
            created=created,
            model=model,
            choices=[choice],
            usage=generation.usage(),
            helios=generation.helios_stats(),
        )

    def chunk(choices: list[ChatChunkChoice], with_totals: bool = False) -> str:
        return _sse(
            ChatCompletionChunk(
                id=generation.request_id,
                created=created,
                model=model,
                choices=choices,
                usage=generation.usage() if with_totals else None,
                helios=generation.helios_stats() if with_totals else None,
            )
        )

    async def events() -> AsyncIterator[str]:
        yield chunk([ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))])
        async for delta in generation.deltas():
            yield chunk([ChatChunkChoice(delta=ChatDelta(content=delta))])
        yield chunk([ChatChunkChoice(delta=ChatDelta(), finish_reason=generation.finish_reason)])
        yield chunk([], with_totals=True)

    return _event_stream(events())
