"""The worker's life: loading (in the background) -> ready -> draining, or failed.

The model loads on a thread after the HTTP server is up, so ``/health`` answers during a long
load (startup probe) while ``/ready`` says 503 until the engine runs. Draining (SIGTERM) turns
readiness and new requests away, lets in-flight requests finish within a grace period, then
aborts the rest.

In evaluation mode there is no model to serve: the worker is ready as soon as its evaluation
runs (the operator reads progress, reports or failure from ``/v1/helios/evaluation``), and
every request for the model gets a 503 that says so.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from helios_worker.server.errors import APIError
from helios_worker.server.recent_prompts import RecentPrompts
from helios_worker.server.settings import ServerSettings
from helios_worker.server.shadow import ShadowSampler

if TYPE_CHECKING:
    from helios_worker.engine import Engine
    from helios_worker.evaluation_service import EvaluationService
    from helios_worker.metrics import WorkerMetrics
    from helios_worker.server.runner import EngineRunner

logger = logging.getLogger("helios.server")

DRAIN_POLL_SECONDS = 0.05
RETRY_AFTER_SECONDS = "5"  # while loading or draining: another replica, or this one soon


class Phase(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


def load_engine(settings: ServerSettings) -> Engine:
    """The default loader: the first ``settings.layers`` layers of the model, in an Engine."""
    from helios_worker.device import resolve_budget, resolve_device, resolve_dtype
    from helios_worker.engine import Engine, EngineConfig
    from helios_worker.exit_plan import describe_exits, find_profile, parse_exit_layers
    from helios_worker.loading import load_model

    device = resolve_device(settings.device)
    budget = resolve_budget(settings.memory_budget, device, settings.gpu_memory_utilization)  # before the weights
    dtype = resolve_dtype(settings.dtype, device)
    loaded = load_model(settings.model_ref, settings.layers, device=device, dtype=dtype, name=settings.model_name)
    mode = parse_exit_layers(settings.exit_layers)
    profile, source = find_profile(
        loaded.ref.path,
        loaded.num_layers_total,
        settings.exit_profile,
        settings.exit_histogram,
        settings.exit_threshold,
    )
    config = EngineConfig(
        max_batch_size=settings.max_batch_size,
        max_seq_len=settings.max_seq_len,
        exit_threshold=settings.exit_threshold,
        early_exit=settings.early_exit,
        min_exit_layer=settings.min_exit_layer,
        exit_layers=mode,
        exit_profile=profile,
        max_exits=settings.max_exits,
        exit_gate=settings.exit_gate,
        gate_threshold=settings.gate_threshold,
        memory_budget=budget,
    )
    exits = load_exits(loaded, settings.exits) if settings.exits else None
    engine = Engine(loaded, config, exits=exits)
    if exits is not None and profile is None:
        profile, source = exits.manifest, f"{settings.exits} (calibrated exits)"
    if settings.early_exit:
        logger.info(
            "%s: %s; exit gate %s",
            settings.model_name,
            describe_exits(mode, profile, source),
            "trained" if exits else settings.exit_gate,
        )
    plan = engine.memory_plan
    logger.info(
        "%s on %s in %s: memory budget %s, weights %d bytes, KV cache for %d sequences of %d tokens",
        settings.model_name,
        device,
        str(dtype).removeprefix("torch."),
        "none" if budget is None else f"{budget} bytes",
        plan.weight_bytes,
        plan.max_num_seqs,
        plan.max_seq_len,
    )
    return engine


def load_exits(loaded, directory: str):
    """The calibrated exits in ``directory`` for ``loaded``; SidecarError if they belong to another model."""
    from pathlib import Path

    from helios_worker.exit_sidecar import CalibratedExits, weights_fingerprint

    return CalibratedExits.load(
        Path(directory),
        hidden_size=loaded.config.hidden_size,
        num_layers_total=loaded.num_layers_total,
        fingerprint=weights_fingerprint(sorted(set(loaded.checkpoint.files.values()))),
        device=loaded.device,
        dtype=loaded.dtype,
    )


RunnerHook = Callable[["EngineRunner"], None]


class WorkerState:
    def __init__(
        self,
        settings: ServerSettings,
        registry: CollectorRegistry,
        *,
        loader: Callable[[ServerSettings], Engine] = load_engine,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.phase = Phase.LOADING
        self.reason: str | None = "loading the model"
        self.load_error: BaseException | None = None
        self.runner: EngineRunner | None = None
        self.recent_prompts = RecentPrompts(settings.record_prompts) if settings.record_prompts else None
        self.shadow_sampler = ShadowSampler(settings.shadow_fraction) if settings.shadow_fraction else None
        self.metrics: WorkerMetrics | None = None  # set once the model has loaded (serving mode)
        # Called on the loading thread with the new runner before it starts: set its callbacks here.
        self.runner_hooks: list[RunnerHook] = []
        self.is_evaluation_mode = settings.mode == "evaluate"
        self._loader = loader
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # phase changes race between the loading thread and the loop
        self.failed = asyncio.Event()  # set (on the loop) when loading failed

    # --- loading --------------------------------------------------------------------------
    def start_loading(self) -> None:
        """Load in a daemon thread (a worker stopped during a long load need not wait for it)."""
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._load, name="helios-load", daemon=True).start()

    def start_evaluating(self, service: EvaluationService) -> None:
        """Evaluation mode: run the evaluation in its own thread; ready from now on."""
        service.start()
        with self._lock:
            if self.phase == Phase.LOADING:
                self.phase, self.reason = Phase.READY, None
        logger.info("evaluating %d candidates on %d prompts", len(service.candidates), len(service.prompts))

    def _load(self) -> None:
        from helios_worker.server.runner import EngineRunner

        started = time.perf_counter()
        try:
            engine = self._loader(self.settings)
            runner = EngineRunner(engine, max_queue=self.settings.max_queue)
            for hook in self.runner_hooks:
                hook(runner)
            runner.start()
        except Exception as error:  # any failure must reach /ready and the process exit status
            logger.error("loading %s failed: %s", self.settings.model_ref, error)
            with self._lock:
                self.phase, self.reason, self.load_error = Phase.FAILED, f"loading the model failed: {error}", error
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self.failed.set)
            return
        with self._lock:
            self.runner = runner
            if self.phase == Phase.LOADING:  # not draining already
                self.phase, self.reason = Phase.READY, None
        loaded = engine.loaded
        logger.info(
            "serving %s (%s): %d of %d layers, loaded in %.1f s",
            self.settings.model_name,
            loaded.architecture,
            loaded.num_layers_loaded,
            loaded.num_layers_total,
            time.perf_counter() - started,
        )

    # --- serving --------------------------------------------------------------------------
    def _refuse_in_evaluation_mode(self) -> None:
        if self.is_evaluation_mode:
            raise APIError(
                503,
                "this worker runs in evaluation mode (HELIOS_MODE=evaluate) and serves no model; "
                "its results are at GET /v1/helios/evaluation",
                code="evaluation_mode",
            )

    def serving_runner(self) -> EngineRunner:
        """The runner, if new requests may use it; else the 503 that explains why not."""
        self._refuse_in_evaluation_mode()
        runner = self.runner
        if self.phase == Phase.READY and runner is not None:
            return runner
        raise APIError(
            503,
            f"not serving: {self.reason}",
            code=f"worker_{self.phase.value}",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )

    def loaded_runner(self) -> EngineRunner:
        """The runner whatever the phase (state and layer changes work while draining)."""
        self._refuse_in_evaluation_mode()
        if self.runner is None:
            raise APIError(503, f"no model yet: {self.reason}", code=f"worker_{self.phase.value}")
        return self.runner

    def record_prompt(self, prompt: str) -> None:
        if self.recent_prompts is not None:
            self.recent_prompts.record(prompt)

    def use_metrics(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def offer_shadow_sample(self, prompt_token_ids: list[int], token_ids: list[int]) -> None:
        """A finished greedy request, kept for the shadow check with probability --shadow-fraction."""
        if self.shadow_sampler is not None:
            self.shadow_sampler.offer(prompt_token_ids, token_ids)

    # --- stopping -------------------------------------------------------------------------
    def begin_drain(self) -> None:
        with self._lock:
            if self.phase in (Phase.LOADING, Phase.READY):
                self.phase, self.reason = Phase.DRAINING, "draining before shutdown"

    async def drain(self, grace_seconds: float) -> None:
        """Refuse new work, wait up to ``grace_seconds`` for in-flight requests, abort the rest."""
        self.begin_drain()
        runner = self.runner
        if runner is None:
            return
        deadline = time.monotonic() + grace_seconds
        while runner.num_in_flight and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        if runner.num_in_flight:
            logger.warning("drain period over: aborting %d requests", runner.num_in_flight)
            runner.abort_all()
            while runner.num_in_flight and time.monotonic() < deadline + 5:
                await asyncio.sleep(DRAIN_POLL_SECONDS)
        logger.info("drained")

    def shutdown(self) -> None:
        if self.runner is not None:
            self.runner.stop()
