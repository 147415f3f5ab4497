"""OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

Streams are server-sent events: one ``data: {chunk}`` per text delta of a choice (with its
tokens' logprobs when asked for; with ``echo`` a choice's first is the prompt), a chunk with each
choice's finish reason and ``helios`` stats as it ends, a last chunk with ``choices: []`` and the
``usage`` (and the joined ``helios`` stats), then ``data: [DONE]``. Several choices' chunks
interleave as they come (``index`` tells them apart). An error after the stream started is sent
as ``data: {"error": ...}``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from helios_worker.server.errors import APIError, sse_error_event
from helios_worker.server.generation import Generation, Generations, unless_disconnected
from helios_worker.server.logprobs import CompletionLogprobsWriter, chat_logprobs
from helios_worker.server.prompts import (
    PreparedPrompt,
    chat_prompt,
    choice_params,
    completion_prompts,
    sampling_params,
)
from helios_worker.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionLogprobs,
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
    worker: WorkerState,
    body: CompletionRequest | ChatCompletionRequest,
    prepare: Callable[[Any, int], list[PreparedPrompt]],
    echo: bool = False,
) -> Generations:
    """Everything up to submitting: any 4xx/429/503 happens here, before a response starts."""
    _check_model(body.model, worker)
    runner = worker.serving_runner()
    loaded = runner.loaded
    prompts = prepare(loaded.tokenizer, loaded.config.vocab_size)
    if len(prompts) * body.n > runner.capacity:
        raise APIError(
            400,
            f"{len(prompts)} prompt(s) x n={body.n} are more sequences than this worker holds at once "
            f"({runner.capacity}: batch slots and waiting queue)",
            param="n" if body.n > 1 else "prompt",
        )
    all_params = [sampling_params(body, len(prompt.token_ids), runner.engine.max_seq_len) for prompt in prompts]
    choices = []
    for prompt, params in zip(prompts, all_params, strict=True):
        worker.record_prompt(prompt.text)
        echo_text = prompt.text if echo else None
        for j, params_j in enumerate(choice_params(params, body.n)):
            # One shadow sample per prompt (see server/shadow.py): greedy choices are all the same.
            on_finished = worker.offer_shadow_sample if params.is_greedy and j == 0 else None
            generation = Generation(
                runner, loaded.tokenizer, prompt.token_ids, params_j, body.stop_strings, on_finished, echo_text
            )
            choices.append(generation)
    generations = Generations(choices, body.n)
    generations.start()
    return generations


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


def _completion_logprobs(tokenizer: Any, choice: Generation) -> CompletionLogprobs:
    """A whole choice's legacy logprobs: the echoed prompt's tokens first."""
    token_ids, entries = list(choice.token_ids), list(choice.logprobs)
    if choice.echo_text is not None:
        token_ids, entries = choice.prompt_token_ids + token_ids, choice.prompt_logprobs + entries
    return CompletionLogprobsWriter(tokenizer).write(token_ids, entries)


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
    generations = _start(worker, body, lambda tokenizer, vocab: completion_prompts(body, tokenizer, vocab), body.echo)
    tokenizer = generations.choices[0].runner.loaded.tokenizer
    model, created = worker.settings.model_name, int(time.time())
    wants_logprobs = body.logprobs is not None

    def response(choices: list[CompletionChoice], with_totals: bool) -> CompletionResponse:
        return CompletionResponse(
            id=generations.request_id,
            created=created,
            model=model,
            choices=choices,
            usage=generations.usage() if with_totals else None,
            helios=generations.helios_stats() if with_totals else None,
        )

    if not body.stream:
        texts = await unless_disconnected(request, generations.collect())
        choices = [
            CompletionChoice(
                index=index,
                text=text,
                finish_reason=choice.finish_reason,
                logprobs=_completion_logprobs(tokenizer, choice) if wants_logprobs else None,
                helios=choice.helios_stats(),
            )
            for index, (choice, text) in enumerate(zip(generations.choices, texts, strict=True))
        ]
        return response(choices, True)

    writers = [CompletionLogprobsWriter(tokenizer) for _ in generations.choices]  # running text offsets

    async def events() -> AsyncIterator[str]:
        async for index, delta in generations.deltas():
            choice = generations.choices[index]
            if delta is None:
                finish = CompletionChoice(
                    index=index, text="", finish_reason=choice.finish_reason, helios=choice.helios_stats()
                )
                yield _sse(response([finish], False))
                continue
            logprobs = writers[index].write(delta.token_ids, delta.logprobs) if wants_logprobs else None
            yield _sse(response([CompletionChoice(index=index, text=delta.text, logprobs=logprobs)], False))
        yield _sse(response([], True))

    return _event_stream(events())


@router.post("/chat/completions", response_model=ChatCompletionResponse)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, worker: Worker
) -> ChatCompletionResponse | StreamingResponse:
    generations = _start(worker, body, lambda tokenizer, _vocab: [chat_prompt(body, tokenizer)])
    tokenizer = generations.choices[0].runner.loaded.tokenizer
    model, created = worker.settings.model_name, int(time.time())
    wants_logprobs = bool(body.logprobs)

    if not body.stream:
        texts = await unless_disconnected(request, generations.collect())
        choices = [
            ChatChoice(
                index=index,
                message=AssistantMessage(content=text),
                finish_reason=choice.finish_reason,
                logprobs=chat_logprobs(tokenizer, choice.logprobs) if wants_logprobs else None,
                helios=choice.helios_stats(),
            )
            for index, (choice, text) in enumerate(zip(generations.choices, texts, strict=True))
        ]
        return ChatCompletionResponse(
            id=generations.request_id,
            created=created,
            model=model,
            choices=choices,
            usage=generations.usage(),
            helios=generations.helios_stats(),
        )

    def chunk(choices: list[ChatChunkChoice], with_totals: bool = False) -> str:
        return _sse(
            ChatCompletionChunk(
                id=generations.request_id,
                created=created,
                model=model,
                choices=choices,
                usage=generations.usage() if with_totals else None,
                helios=generations.helios_stats() if with_totals else None,
            )
        )

    async def events() -> AsyncIterator[str]:
        for index in range(len(generations.choices)):
            yield chunk([ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""))])
        async for index, delta in generations.deltas():
            choice = generations.choices[index]
            if delta is None:
                finish = ChatChunkChoice(
                    index=index, delta=ChatDelta(), finish_reason=choice.finish_reason, helios=choice.helios_stats()
                )
                yield chunk([finish])
                continue
            logprobs = chat_logprobs(tokenizer, delta.logprobs) if wants_logprobs else None
            yield chunk([ChatChunkChoice(index=index, delta=ChatDelta(content=delta.text), logprobs=logprobs)])
        yield chunk([], with_totals=True)

    return _event_stream(events())
