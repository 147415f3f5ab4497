"""Requests' lives on the engine runner, seen from the API: deltas of text and tokens, then totals.

A ``Generation`` is one engine request (one choice): ``start()`` submits (so a full queue is a
429 before any response starts); ``deltas()`` yields text as it becomes safe to send, with the
tokens (and, when asked for, their logprobs) that came since the previous delta; leaving early
(client gone, stop string) aborts the request on the engine. With ``echo_text`` the first delta
is the prompt, with the prompt's tokens and logprobs.

``Generations`` are a response's choices, n per prompt in choice-index order: started all or
none, collected together, or streamed merged as their deltas come; usage and ``helios`` stats
over all of them. Completions and chat format the same Generations differently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request

from helios_worker.sampling import SamplingParams
from helios_worker.server.errors import APIError
from helios_worker.server.protocol import HeliosStats, LayerChangeMark, Usage
from helios_worker.server.runner import EngineRunner, QueueFullError, RequestStream, RunnerStoppedError
from helios_worker.server.text import TextStream
from helios_worker.stats import TokenLogprobs, TokenStats

T = TypeVar("T")

QUEUE_FULL_RETRY_AFTER_SECONDS = "1"


@dataclass(frozen=True)
class Delta:
    """Text that is safe to send, and the tokens that came since the previous delta."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprobs | None, ...] = ()  # one per token when asked for (None: the prompt's first)
    is_prompt: bool = False  # the echoed prompt


class Generation:
    def __init__(
        self,
        runner: EngineRunner,
        tokenizer: Any,
        prompt_token_ids: list[int],
        params: SamplingParams,
        stop_strings: list[str],
        on_finished: Callable[[list[int], list[int]], None] | None = None,
        echo_text: str | None = None,
    ) -> None:
        self.runner = runner
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.echo_text = echo_text
        self.text = TextStream(tokenizer, stop_strings)
        self.token_ids: list[int] = []
        self.token_stats: list[TokenStats] = []
        self.logprobs: list[TokenLogprobs] = []  # per generated token, when asked for
        # Per prompt token when asked for (None where there is none: the first, or all if aborted before the prefill).
        self.prompt_logprobs: list[TokenLogprobs | None] = []
        self.layer_changes: list[LayerChangeMark] = []
        self.finish_reason: str | None = None
        self._stream: RequestStream | None = None
        # (prompt ids, served ids) of a request that ran to its end (not aborted, no error).
        self._on_finished = on_finished

    @property
    def request_id(self) -> str:
        return self._stream.request_id if self._stream else ""

    @property
    def output_text(self) -> str:
        """The choice's whole text: the echoed prompt, then what was generated and released."""
        return (self.echo_text or "") + self.text.text

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

    def abort(self) -> None:
        if self._stream is not None and not self._stream.is_finished:
            self.runner.abort(self._stream.request_id)

    async def deltas(self) -> AsyncIterator[Delta]:
        """Deltas until the request ends; ``finish_reason`` is set when this returns."""
        stream = self._stream
        if stream is None:
            raise RuntimeError("start() the generation first")
        is_echo_pending = self.echo_text is not None
        new_ids: list[int] = []
        new_logprobs: list[TokenLogprobs] = []
        try:
            while True:
                event = await stream.next_event()
                if event.error is not None:
                    raise APIError(500, event.error, code="engine_error")
                if event.layer_change is not None:
                    at_token, layers = event.layer_change
                    self.layer_changes.append(LayerChangeMark(at_token=at_token, layers=layers))
                    continue
                if is_echo_pending:  # the first event after the prefill carries the prompt's logprobs
                    is_echo_pending = False
                    if self.params.prompt_logprobs is not None:
                        self.prompt_logprobs = list(event.prompt_logprobs or [None] * len(self.prompt_token_ids))
                    yield Delta(self.echo_text or "", tuple(self.prompt_token_ids), tuple(self.prompt_logprobs), True)
                self.token_ids += event.token_ids
                self.token_stats += event.token_stats
                self.logprobs += event.logprobs
                new_ids += event.token_ids
                new_logprobs += event.logprobs
                text = self.text.add(event.token_ids)
                if self.text.is_stopped:
                    self.finish_reason = "stop"
                elif event.finished:
                    self.finish_reason = event.finish_reason
                    text += self.text.finish()
                # Held-back text keeps its tokens' logprobs for the next delta; the last one takes the rest.
                if text or (self.finish_reason is not None and new_logprobs):
                    yield Delta(text, tuple(new_ids), tuple(new_logprobs))
                    new_ids, new_logprobs = [], []
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
        return self.output_text

    def helios_stats(self) -> HeliosStats:
        return _stats(
            self.runner,
            [stats.exit_layer for stats in self.token_stats],
            sum(stats.is_breach for stats in self.token_stats),
            self.layer_changes,
        )


class Generations:
    """A response's choices: ``n`` per prompt, prompt by prompt (index = prompt x n + j)."""

    def __init__(self, choices: list[Generation], n: int) -> None:
        self.choices = choices
        self.n = n

    @property
    def request_id(self) -> str:
        return self.choices[0].request_id

    def start(self) -> None:
        """Submit every choice, or none: a refusal (429/503) aborts the ones already submitted."""
        started: list[Generation] = []
        try:
            for choice in self.choices:
                choice.start()
                started.append(choice)
        except APIError:
            for choice in started:
                choice.abort()
            raise

    async def collect(self) -> list[str]:
        """Every choice's text; an error in one ends (aborts) the others."""
        tasks = [asyncio.ensure_future(choice.collect()) for choice in self.choices]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()  # no-op for finished ones; the others abort on the engine

    async def deltas(self) -> AsyncIterator[tuple[int, Delta | None]]:
        """(choice index, delta) as the choices produce them, and (index, None) when one ends
        (its ``finish_reason`` set); an error in one ends all."""
        queue: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

        async def pump(index: int, choice: Generation) -> None:
            try:
                async with contextlib.aclosing(choice.deltas()) as deltas:
                    async for delta in deltas:
                        queue.put_nowait((index, delta))
                queue.put_nowait((index, None))
            except Exception as error:  # handed to the consumer, which raises it
                queue.put_nowait((index, error))

        tasks = [asyncio.ensure_future(pump(index, choice)) for index, choice in enumerate(self.choices)]
        try:
            remaining = len(tasks)
            while remaining:
                index, item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                remaining -= item is None
                yield index, item
        finally:
            for task in tasks:
                task.cancel()  # client gone or an error: the choices still going abort on the engine

    def usage(self) -> Usage:
        """Each prompt counted once, every choice's generated tokens."""
        prompt = sum(len(choice.prompt_token_ids) for choice in self.choices[:: self.n])
        completion = sum(len(choice.token_ids) for choice in self.choices)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def helios_stats(self) -> HeliosStats:
        """Every choice's stats joined in index order; a layer change mark indexes the joined exit layers."""
        exit_layers: list[int] = []
        changes: list[LayerChangeMark] = []
        for choice in self.choices:
            changes += [
                LayerChangeMark(at_token=len(exit_layers) + mark.at_token, layers=mark.layers)
                for mark in choice.layer_changes
            ]
            exit_layers += [stats.exit_layer for stats in choice.token_stats]
        num_breaches = sum(stats.is_breach for choice in self.choices for stats in choice.token_stats)
        return _stats(self.choices[0].runner, exit_layers, num_breaches, changes)


def _stats(
    runner: EngineRunner, exit_layers: list[int], num_breaches: int, changes: list[LayerChangeMark]
) -> HeliosStats:
    return HeliosStats(
        layers_loaded=runner.snapshot.layers_loaded,
        layers_total=runner.loaded.num_layers_total,
        mean_exit_layer=sum(exit_layers) / len(exit_layers) if exit_layers else None,
        num_breaches=num_breaches,
        exit_layers=exit_layers,
        layer_changes=changes,
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
