"""The engine loop: one thread owns the Engine; asyncio handlers talk to it through queues.

The Engine is not thread-safe, so everything that touches it (add, abort, layer change, step)
runs on one background thread. Handlers send commands through a thread-safe queue and get
tokens back on a per-request ``asyncio.Queue`` (filled with ``loop.call_soon_threadsafe``).
The thread steps while there is work and sleeps on an event otherwise.

Callbacks, for metrics and anything else that watches the engine. Plain attributes, no-ops by
default; set them before ``start()``. They run on the engine thread between steps, so they
must be quick and must not block; an exception in one is logged and ignored (a metrics bug
must not stop serving):

    on_step(outputs: list[RequestOutput], stats: StepStats) -> None
        after every ``engine.step()``: the requests that got a token in it, and its stats.
    on_request_done(output: RequestOutput, status: str) -> None
        once per request when it ends; ``status`` is "ok" (eos, stop token or string, length),
        "abort" (client gone, drain timeout, shutdown) or "error" (the engine failed).
    on_layers_changed(num_layers_loaded: int, num_layers_total: int) -> None
        after an in-place layer change took effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from helios_worker.engine import Engine, RequestError
from helios_worker.sampling import SamplingParams
from helios_worker.stats import RequestOutput, StepStats, TokenLogprobs, TokenStats

logger = logging.getLogger("helios.runner")

IDLE_WAIT_SECONDS = 1.0  # idle wake-up, only a safety net: commands set the wake event


def _ignore(*_: object) -> None:
    return None


@dataclass(frozen=True)
class TokenEvent:
    """What happened to a request since its previous event."""

    token_ids: tuple[int, ...] = ()
    token_stats: tuple[TokenStats, ...] = ()
    logprobs: tuple[TokenLogprobs, ...] = ()  # of token_ids, when the request asked for them
    prompt_logprobs: tuple[TokenLogprobs | None, ...] | None = None  # in the first event, when asked for
    layer_change: tuple[int, int] | None = None  # (tokens generated so far, new layer count)
    finished: bool = False
    finish_reason: str | None = None
    error: str | None = None  # the engine failed this request (message for the client)


@dataclass(frozen=True)
class LayerChange:
    layers: int
    previous_layers: int
    seconds: float
    weight_bytes: int
    bytes_read: int
    max_num_seqs: int  # sequences the KV cache holds at the new depth
    kv_cache_capacity_tokens: int
    memory_budget_bytes: int | None


@dataclass(frozen=True)
class RunnerSnapshot:
    """Published by the engine thread after every step and command (read from any thread)."""

    num_running: int = 0
    num_waiting: int = 0
    layers_loaded: int = 0


class QueueFullError(Exception):
    """More requests than batch slots plus the waiting queue: the client should retry later."""


class RunnerStoppedError(Exception):
    """The runner is not taking requests (stopped or never started)."""


class RequestStream:
    """A submitted request: iterate its events; the last one has ``finished`` set."""

    def __init__(self, request_id: str, events: asyncio.Queue[TokenEvent]) -> None:
        self.request_id = request_id
        self._events = events
        self.is_finished = False

    async def next_event(self) -> TokenEvent:
        event = await self._events.get()
        self.is_finished = event.finished
        return event


# --- commands into the engine thread --------------------------------------------------------
@dataclass(frozen=True)
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    deliver: Callable[[TokenEvent], None]


@dataclass(frozen=True)
class _Abort:
    request_id: str
    reason: str  # finish reason the client sees: "abort", or "stop" for a stop string seen by the server


@dataclass(frozen=True)
class _ChangeLayers:
    layers: int
    result: Future[LayerChange]


@dataclass(frozen=True)
class _AbortAll:
    pass


@dataclass(frozen=True)
class _Stop:
    pass


@dataclass
class _Tracked:
    output: RequestOutput
    deliver: Callable[[TokenEvent], None]
    num_sent: int = 0  # tokens already delivered
    is_started: bool = False  # an event after the prefill went out (it carried the prompt's logprobs)


@dataclass
class _Counter:
    """Requests accepted and not finished; admission control reads it from the event loop."""

    value: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class EngineRunner:
    def __init__(self, engine: Engine, *, max_queue: int) -> None:
        self.engine = engine
        self.loaded = engine.loaded
        self.max_queue = max_queue
        self.on_step: Callable[[list[RequestOutput], StepStats], None] = _ignore
        self.on_request_done: Callable[[RequestOutput, str], None] = _ignore
        self.on_layers_changed: Callable[[int, int], None] = _ignore
        self.snapshot = RunnerSnapshot(layers_loaded=engine.active_layers)
        self._commands: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._tracked: dict[str, _Tracked] = {}  # engine thread only
        self._in_flight = _Counter()
        self._is_accepting = False
        self._thread = threading.Thread(target=self._run, name="helios-engine", daemon=True)

    # --- any thread -----------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Requests held at once: a batch slot each (as many as the memory budget holds), plus the waiting queue."""
        return self.engine.num_slots + self.max_queue

    @property
    def num_in_flight(self) -> int:
        return self._in_flight.value

    def start(self) -> None:
        self._is_accepting = True
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Abort what is in flight (clients see finish_reason "abort") and end the thread."""
        self._is_accepting = False
        if self._thread.is_alive():
            self._send(_Stop())
            self._thread.join(timeout)

    def abort(self, request_id: str, reason: str = "abort") -> None:
        self._send(_Abort(request_id, reason))

    def abort_all(self) -> None:
        self._send(_AbortAll())

    # --- the event loop -------------------------------------------------------------------
    def submit(self, prompt_token_ids: list[int], params: SamplingParams) -> RequestStream:
        """Queue a request; call from the event loop. QueueFullError when at capacity."""
        if not self._is_accepting:
            raise RunnerStoppedError("the engine is not running")
        with self._in_flight.lock:
            if self._in_flight.value >= self.capacity:
                raise QueueFullError(f"{self._in_flight.value} requests in flight (capacity {self.capacity})")
            self._in_flight.value += 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent] = asyncio.Queue()

        def deliver(event: TokenEvent) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed (shutdown): nobody listens any more
                loop.call_soon_threadsafe(events.put_nowait, event)

        request_id = f"cmpl-{uuid.uuid4().hex}"
        self._send(_Add(request_id, list(prompt_token_ids), params, deliver))
        return RequestStream(request_id, events)

    async def change_layers(self, layers: int) -> LayerChange:
        """Grow or shrink the served stack between two steps; in-flight requests continue."""
        if not self._is_accepting:
            raise RunnerStoppedError("the engine is not running")
        result: Future[LayerChange] = Future()
        self._send(_ChangeLayers(layers, result))
        return await asyncio.wrap_future(result)

    def _send(self, command: object) -> None:
        self._commands.put(command)
        self._wake.set()

    # --- the engine thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            if not self._apply_commands():
                return
            if self.engine.has_unfinished():
                self._step()
            else:
                self._wake.wait(IDLE_WAIT_SECONDS)
                self._wake.clear()  # commands sent before set() are already queued: none is lost

    def _apply_commands(self) -> bool:
        """Run queued commands in order; False once told to stop."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True
            if isinstance(command, _Add):
                self._add(command)
            elif isinstance(command, _Abort):
                self._abort(command.request_id, command.reason)
            elif isinstance(command, _ChangeLayers):
                self._change_layers(command)
            elif isinstance(command, _AbortAll | _Stop):
                for request_id in list(self._tracked):
                    self._abort(request_id, "abort")
                if isinstance(command, _Stop):
                    return False
            self._publish()

    def _step(self) -> None:
        try:
            outputs, stats = self.engine.step()
        except Exception:  # a bug or a device error: fail these requests, keep serving others
            logger.exception("engine step failed; failing the requests in flight")
            for request_id in list(self._tracked):
                self._abort(request_id, "abort", error="the engine failed while generating; see the worker log")
            return
        for output in outputs:
            tracked = self._tracked.get(output.request_id)
            if tracked is None:
                continue
            sent = tracked.num_sent
            prompt_logprobs = None
            if not tracked.is_started and output.prompt_logprobs is not None:
                prompt_logprobs = tuple(output.prompt_logprobs)
            tracked.num_sent, tracked.is_started = len(output.token_ids), True
            tracked.deliver(
                TokenEvent(
                    tuple(output.token_ids[sent:]),
                    tuple(output.token_stats[sent:]),
                    tuple(output.logprobs[sent:]),
                    prompt_logprobs,
                    finished=output.finished,
                    finish_reason=output.finish_reason,
                )
            )
        self._callback(self.on_step, outputs, stats)
        for output in outputs:
            if output.finished and output.request_id in self._tracked:
                self._end(output.request_id, "ok")
        self.snapshot = RunnerSnapshot(stats.num_running, stats.num_waiting, self.engine.active_layers)

    def _add(self, command: _Add) -> None:
        try:
            self.engine.add_request(command.prompt_token_ids, command.params, request_id=command.request_id)
        except RequestError as error:  # checked by the API before submitting; kept as a safety net
            self._release()
            command.deliver(TokenEvent(finished=True, finish_reason="abort", error=str(error)))
            return
        output = self.engine.waiting[-1].output  # add_request appends the new sequence
        self._tracked[command.request_id] = _Tracked(output, command.deliver)

    def _abort(self, request_id: str, reason: str, error: str | None = None) -> None:
        tracked = self._tracked.get(request_id)
        if tracked is None:  # finished already
            return
        self.engine.abort(request_id)
        tracked.output.finish_reason = reason
        tracked.deliver(TokenEvent(finished=True, finish_reason=reason, error=error))
        self._end(request_id, "error" if error else "abort" if reason == "abort" else "ok")

    def _end(self, request_id: str, status: str) -> None:
        tracked = self._tracked.pop(request_id)
        self._release()
        self._callback(self.on_request_done, tracked.output, status)

    def _release(self) -> None:
        with self._in_flight.lock:
            self._in_flight.value -= 1

    def _change_layers(self, command: _ChangeLayers) -> None:
        if not command.result.set_running_or_notify_cancel():  # the caller gave up before we started
            return
        engine, loaded = self.engine, self.loaded
        previous = engine.active_layers
        start = time.perf_counter()
        try:
            # Within the memory budget: the cache gives up or gets back slots (Engine.change_layers).
            bytes_read = engine.change_layers(command.layers)
        except (ValueError, RuntimeError) as error:  # refused, ModelLoadError (ValueErrors); OOM a RuntimeError
            command.result.set_exception(error)
            return
        for tracked in self._tracked.values():
            tracked.deliver(TokenEvent(layer_change=(len(tracked.output.token_ids), command.layers)))
        change = LayerChange(
            layers=command.layers,
            previous_layers=previous,
            seconds=time.perf_counter() - start,
            weight_bytes=loaded.weight_bytes(),
            bytes_read=bytes_read,
            max_num_seqs=engine.num_slots,
            kv_cache_capacity_tokens=engine.memory_plan.kv_capacity_tokens,
            memory_budget_bytes=engine.memory_plan.budget_bytes,
        )
        command.result.set_result(change)
        self._callback(self.on_layers_changed, loaded.num_layers_loaded, loaded.num_layers_total)

    def _publish(self) -> None:
        self.snapshot = RunnerSnapshot(len(self.engine.running), len(self.engine.waiting), self.engine.active_layers)

    @staticmethod
    def _callback(callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            logger.exception("runner callback %r failed", callback)
