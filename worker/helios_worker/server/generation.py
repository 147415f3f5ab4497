"""One request's life on the engine runner, seen from the API: text deltas, then the totals.

``start()`` submits (so a full queue is a 429 before any response starts); ``deltas()``
yields text as it becomes safe to send; leaving early (client gone, stop string) aborts the
request on the engine. Completions and chat format the same Generation differently.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request

from helios_worker.sampling import SamplingParams
from helios_worker.server.errors import APIError
from helios_worker.server.protocol import HeliosStats, LayerChangeMark, Usage
from helios_worker.server.runner import EngineRunner, QueueFullError, RequestStream, RunnerStoppedError
from helios_worker.server.text import TextStream
from helios_worker.stats import TokenStats

T = TypeVar("T")

QUEUE_FULL_RETRY_AFTER_SECONDS = "1"


class Generation:
    def __init__(
        self,
        runner: EngineRunner,
        tokenizer: Any,
        prompt_token_ids: list[int],
        params: SamplingParams,
        stop_strings: list[str],
        on_finished: Callable[[list[int], list[int]], None] | None = None,
    ) -> None:
        self.runner = runner
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.text = TextStream(tokenizer, stop_strings)
        self.token_ids: list[int] = []
        self.token_stats: list[TokenStats] = []
        self.layer_changes: list[LayerChangeMark] = []
        self.finish_reason: str | None = None
        self._stream: RequestStream | None = None
        # (prompt ids, served ids) of a request that ran to its end (not aborted, no error).
        self._on_finished = on_finished

    @property
    def request_id(self) -> str:
        return self._stream.request_id if self._stream else ""

    def start(self) -> None:
        try:
            self._stream = self.runner.submit(self.prompt_token_ids, self.params)
        except QueueFullError as error:
            raise APIError(
                429,
                f"the worker is at capacity ({error}); retry later",
                code="queue_full",
                headers={"Retry-After": QUEUE_FULL_RETRY_AFTER_SECONDS},
            ) from None
        except RunnerStoppedError:
            raise APIError(503, "the engine is shutting down", code="worker_draining") from None

    async def deltas(self) -> AsyncIterator[str]:
        """Text deltas until the request ends; ``finish_reason`` is set when this returns."""
        stream = self._stream
        if stream is None:
            raise RuntimeError("start() the generation first")
        try:
            while True:
                event = await stream.next_event()
                if event.error is not None:
                    raise APIError(500, event.error, code="engine_error")
                if event.layer_change is not None:
                    at_token, layers = event.layer_change
                    self.layer_changes.append(LayerChangeMark(at_token=at_token, layers=layers))
                self.token_ids += event.token_ids
                self.token_stats += event.token_stats
                delta = self.text.add(event.token_ids)
                if self.text.is_stopped:
                    self.finish_reason = "stop"
                elif event.finished:
                    self.finish_reason = event.finish_reason
                    delta += self.text.finish()
                if delta:
                    yield delta
                if self.finish_reason is not None:
                    if self._on_finished is not None and self.finish_reason != "abort":
                        self._on_finished(self.prompt_token_ids, self.token_ids)
                    return
        finally:
            if not stream.is_finished:  # stop string, client gone, or an error above
                self.runner.abort(stream.request_id, "stop" if self.text.is_stopped else "abort")

    async def collect(self) -> str:
        async for _ in self.deltas():
            pass
        return self.text.text

    def usage(self) -> Usage:
        prompt, completion = len(self.prompt_token_ids), len(self.token_ids)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def helios_stats(self) -> HeliosStats:
        loaded = self.runner.loaded
        exit_layers = [stats.exit_layer for stats in self.token_stats]
        return HeliosStats(
            layers_loaded=self.runner.snapshot.layers_loaded,
            layers_total=loaded.num_layers_total,
            mean_exit_layer=sum(exit_layers) / len(exit_layers) if exit_layers else None,
            num_breaches=sum(stats.is_breach for stats in self.token_stats),
            exit_layers=exit_layers,
            layer_changes=self.layer_changes,
        )


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it if the client disconnects first (non-streaming responses).

    Starlette notices a disconnect only while streaming; a client that gives up on a long
    non-streaming completion would otherwise keep its batch slot until the end.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()  # its finally-blocks abort the request on the engine
    if task.done() and not task.cancelled():
        return task.result()
    raise APIError(499, "client disconnected", code="client_disconnected")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
