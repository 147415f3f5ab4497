"""Prometheus metrics for a worker, built from the engine's plain stats (the engine knows no Prometheus).

The server's runner calls ``on_step`` after every engine step and ``on_request_done`` when a
request ends; GPU gauges are read from NVML at scrape time. Names are a contract with the
operator and dashboards: ``helios_`` prefix, unit suffixes, a ``model`` label. Queue length
and KV-cache usage use the shapes autoscalers already read (cf. vLLM's
``num_requests_waiting`` and ``kv_cache_usage``) beside HELIOS's own exit-layer histogram
and confidence breaches.

Wiring in a server (one registry per process; ``/metrics`` serves ``generate_latest(registry)``)::

    metrics = WorkerMetrics.for_model(registry, loaded)       # opens NVML itself unless given
    metrics.set_exit_threshold(engine.config.exit_threshold)
    ...  # in the engine loop, after each ``outputs, stats = engine.step()``:
    metrics.on_step(outputs, stats)
    for output in outputs:
        if output.finished:
            metrics.on_request_done(output, "abort" if output.finish_reason == "abort" else "ok")
    # requests that fail or are aborted outside step(): metrics.on_request_done(output, "error" / "abort")
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from helios_contracts.memory_model import MemoryPlan
from helios_contracts.reports import EvaluationReport
from helios_worker.gpu import GpuTelemetry
from helios_worker.stats import RequestOutput, StepStats
from helios_worker.vllm_metrics import VllmMetrics

if TYPE_CHECKING:
    from helios_worker.loading import LoadedModel

# Explicit buckets (seconds), fine at the low end where interactive serving lives.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


@dataclass
class _ExitCounts:
    buckets: list[int]  # index l-1: tokens that exited at layer l
    total_layers: int = 0  # sum of exit layers (the histogram's _sum)


class _ExitLayerCollector(Collector):
    """``helios_exit_layer``: one bucket per layer 1..N of each model served.

    Hand-rolled because the bucket layout depends on the model, and a worker that switches
    model in-process needs a second layout under the same metric name.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, _ExitCounts] = {}

    def add_model(self, model: str, num_layers: int) -> None:
        with self._lock:
            counts = self._counts.get(model)
            if counts is None or len(counts.buckets) != num_layers:
                self._counts[model] = _ExitCounts([0] * num_layers)

    def observe(self, model: str, exit_layers: Sequence[int]) -> None:
        with self._lock:
            counts = self._counts[model]
            for layer in exit_layers:
                counts.buckets[min(layer, len(counts.buckets)) - 1] += 1
                counts.total_layers += layer

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "helios_exit_layer", "Decoder layer at which each generated token exited (1-based).", labels=["model"]
        )
        with self._lock:
            for model, counts in self._counts.items():
                cumulative, running = [], 0
                for layer, count in enumerate(counts.buckets, 1):
                    running += count
                    cumulative.append((str(float(layer)), running))
                cumulative.append(("+Inf", running))
                family.add_metric([model], cumulative, sum_value=counts.total_layers)
        yield family


class _GpuCollector(Collector):
    """GPU gauges read at scrape time; only ``helios_gpu_available`` exists without NVML."""

    def __init__(self, telemetry: GpuTelemetry, model: Callable[[], str]) -> None:
        self._telemetry = telemetry
        self._model = model

    def collect(self) -> Iterator[Metric]:
        model = self._model()
        readings = self._telemetry.read()
        available = GaugeMetricFamily(
            "helios_gpu_available", "1 if NVML telemetry works on this worker, else 0.", labels=["model"]
        )
        available.add_metric([model], 1.0 if readings else 0.0)
        yield available
        if not readings:
            return
        labels = ["model", "gpu"]
        memory = GaugeMetricFamily("helios_gpu_memory_used_bytes", "GPU memory in use (all processes).", labels=labels)
        power = GaugeMetricFamily("helios_gpu_power_watts", "GPU board power draw.", labels=labels)
        energy = CounterMetricFamily(
            "helios_gpu_energy_joules", "GPU energy used since the worker started.", labels=labels
        )
        for reading in readings:
            gpu = [model, str(reading.index)]
            memory.add_metric(gpu, reading.memory_used_bytes)
            if reading.power_watts is not None:
                power.add_metric(gpu, reading.power_watts)
            if reading.energy_joules is not None:
                energy.add_metric(gpu, reading.energy_joules)
        yield from (memory, power, energy)


# (metric, report field, help): the evaluation curves, one gauge per (candidate, layer).
_EVALUATION_CURVES = (
    (
        "helios_evaluation_agreement",
        "agreement_by_layer",
        "Share of tokens whose top token after L layers is the full-depth one.",
    ),
    (
        "helios_evaluation_greedy_agreement",
        "greedy_agreement_by_layer",
        "Agreement with full depth if L layers were loaded.",
    ),
    ("helios_evaluation_breach_rate", "breach_rate_by_layer", "Share of tokens that would reach layer L unconfident."),
    ("helios_evaluation_mean_exit_layer", "mean_exit_layer_by_layer", "Mean exit layer if L layers were loaded."),
    ("helios_evaluation_exit_tokens", "exit_layer_histogram", "Evaluated tokens whose first confident layer is L."),
)


class _EvaluationCollector(Collector):
    """The latest evaluation report of each candidate, as per-layer gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reports: dict[str, EvaluationReport] = {}

    def publish(self, report: EvaluationReport) -> None:
        with self._lock:
            self._reports[report.model] = report

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            reports = list(self._reports.values())
        for name, field, documentation in _EVALUATION_CURVES:
            family = GaugeMetricFamily(name, documentation, labels=["model", "layer"])
            for report in reports:
                for layer, value in enumerate(getattr(report, field), 1):
                    family.add_metric([report.model, str(layer)], float(value))
            yield family
        throughput = GaugeMetricFamily(
            "helios_evaluation_tokens_per_second", "Full-depth throughput measured by the evaluation.", labels=["model"]
        )
        for report in reports:
            throughput.add_metric([report.model], report.tokens_per_second)
        yield throughput


class WorkerMetrics:
    """All of a worker's metrics on ``registry``; call the ``on_*`` hooks from the engine loop."""

    def __init__(
        self,
        registry: CollectorRegistry,
        model_name: str,
        *,
        num_layers_total: int,
        revision: str | None = None,
        architecture: str = "unknown",
        telemetry: GpuTelemetry | None = None,
        vllm: bool = False,
    ) -> None:
        self._lock = threading.Lock()
        # vLLM's names beside ours, for the autoscalers and gateways that read them (vllm_metrics.py)
        self.vllm = VllmMetrics(registry, model_name) if vllm else None
        self._tokens_seen: dict[str, int] = {}  # request id -> tokens already counted
        self.model = model_name
        self.num_layers_total = num_layers_total
        model = ["model"]
        self.generated_tokens = Counter("helios_generated_tokens", "Tokens generated.", model, registry=registry)
        self.prompt_tokens = Counter("helios_prompt_tokens", "Prompt tokens prefilled.", model, registry=registry)
        self.breaches = Counter(
            "helios_confidence_breaches",
            "Tokens that reached the last loaded layer (< all layers) below the exit threshold.",
            model,
            registry=registry,
        )
        self.requests = Counter(
            "helios_requests", "Requests ended, by status (ok, error, abort).", ["model", "status"], registry=registry
        )
        self.shadow_tokens = Counter(
            "helios_shadow_tokens", "Served tokens replayed at full depth (shadow check).", model, registry=registry
        )
        self.shadow_matches = Counter(
            "helios_shadow_matches",
            "Of the shadow-checked tokens, those equal to the full-depth greedy choice.",
            model,
            registry=registry,
        )
        self._shadow_totals: dict[str, tuple[int, int]] = {}  # model -> (tokens, matches) so far
        self.running = Gauge("helios_num_requests_running", "Requests in the running batch.", model, registry=registry)
        self.waiting = Gauge("helios_num_requests_waiting", "Requests queued for a slot.", model, registry=registry)
        self.kv_cache_usage = Gauge(
            "helios_kv_cache_usage_ratio", "Used KV-cache token slots over capacity (0..1).", model, registry=registry
        )
        self.batch_size = Gauge(
            "helios_batch_size", "Requests that got a token in the last engine step.", model, registry=registry
        )
        self.ttft = Histogram(
            "helios_time_to_first_token_seconds",
            "Arrival to first token.",
            model,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            "helios_time_per_output_token_seconds",
            "Mean time per generated token after the first, per request.",
            model,
            buckets=TPOT_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "helios_request_latency_seconds", "Arrival to finish.", model, buckets=LATENCY_BUCKETS, registry=registry
        )
        self.layers_loaded = Gauge("helios_layers_loaded", "Decoder layers in use (L).", model, registry=registry)
        self.max_num_seqs = Gauge(
            "helios_max_num_seqs", "Sequences the KV cache holds at once now.", model, registry=registry
        )
        self.kv_capacity_tokens = Gauge(
            "helios_kv_cache_capacity_tokens", "Tokens the KV cache holds now.", model, registry=registry
        )
        self.memory_budget_bytes = Gauge(
            "helios_memory_budget_bytes",
            "Bytes the worker may hold for weights, KV cache and activations (absent: no budget).",
            model,
            registry=registry,
        )
        self.weights_bytes = Gauge(
            "helios_weights_bytes", "Bytes of the loaded weights in the served dtype.", model, registry=registry
        )
        self.layers_total = Gauge("helios_layers_total", "Decoder layers of the model (N).", model, registry=registry)
        self.exit_threshold = Gauge(
            "helios_exit_threshold", "Max softmax probability at which a token exits.", model, registry=registry
        )
        self.shadow_agreement = Gauge(
            "helios_shadow_agreement",
            "Share of sampled tokens whose early-exit token equals the full-depth one (shadow check).",
            model,
            registry=registry,
        )
        self.model_info = Gauge(
            "helios_model_info",
            "The model being served (value 1).",
            ["model", "revision", "architecture"],
            registry=registry,
        )
        self._exit_layers = _ExitLayerCollector()
        self._evaluations = _EvaluationCollector()
        self.telemetry = telemetry if telemetry is not None else GpuTelemetry.open()
        for collector in (self._exit_layers, self._evaluations, _GpuCollector(self.telemetry, lambda: self.model)):
            registry.register(collector)
        self._state_gauges = (
            self.running,
            self.waiting,
            self.kv_cache_usage,
            self.batch_size,
            self.layers_loaded,
            self.layers_total,
            self.exit_threshold,
            self.shadow_agreement,
            self.max_num_seqs,
            self.kv_capacity_tokens,
            self.memory_budget_bytes,
            self.weights_bytes,
        )
        self._info_labels: tuple[str, str, str] | None = None
        self.set_model(model_name, num_layers_total=num_layers_total, revision=revision, architecture=architecture)

    @classmethod
    def for_model(
        cls,
        registry: CollectorRegistry,
        loaded: LoadedModel,
        telemetry: GpuTelemetry | None = None,
        vllm: bool = False,
    ) -> WorkerMetrics:
        metrics = cls(
            registry,
            loaded.name,
            num_layers_total=loaded.num_layers_total,
            revision=loaded.ref.revision,
            architecture=loaded.architecture,
            telemetry=telemetry,
            vllm=vllm,
        )
        metrics.set_layers(loaded.num_layers_loaded, loaded.num_layers_total)
        return metrics

    # --- configuration ------------------------------------------------------------------
    def set_model(
        self, model_name: str, *, num_layers_total: int, revision: str | None = None, architecture: str = "unknown"
    ) -> None:
        """Serve a (new) model: state gauges move to its label; counters of the old one stay."""
        with self._lock:
            if self._info_labels is not None:
                self.model_info.remove(*self._info_labels)
            if self.model != model_name:  # the old model's state would read as current otherwise
                for gauge in self._state_gauges:
                    gauge.remove(self.model)
            self.model = model_name
            if self.vllm is not None:
                self.vllm.set_model(model_name)
            self.num_layers_total = num_layers_total
            self._info_labels = (model_name, revision or "", architecture)
            self.model_info.labels(*self._info_labels).set(1)
            self.layers_total.labels(model_name).set(num_layers_total)
            self._exit_layers.add_model(model_name, num_layers_total)

    def set_layers(self, loaded: int, total: int) -> None:
        if total != self.num_layers_total:
            raise ValueError(f"{self.model} has {self.num_layers_total} layers, not {total}; use set_model to switch")
        if not 1 <= loaded <= total:
            raise ValueError(f"layers loaded must be in 1..{total}, got {loaded}")
        self.layers_loaded.labels(self.model).set(loaded)
        self.layers_total.labels(self.model).set(total)

    def set_memory(self, plan: MemoryPlan) -> None:
        """What the KV cache holds and what it was sized from (at load and after each layer change)."""
        self.max_num_seqs.labels(self.model).set(plan.max_num_seqs)
        self.kv_capacity_tokens.labels(self.model).set(plan.kv_capacity_tokens)
        self.weights_bytes.labels(self.model).set(plan.weight_bytes)
        if plan.budget_bytes is not None:
            self.memory_budget_bytes.labels(self.model).set(plan.budget_bytes)

    def set_exit_threshold(self, threshold: float) -> None:
        self.exit_threshold.labels(self.model).set(threshold)

    def record_shadow_agreement(self, agreement: float) -> None:
        self.shadow_agreement.labels(self.model).set(agreement)

    def record_shadow_result(self, num_tokens: int, num_matches: int) -> None:
        """A scored batch of shadow samples; the agreement gauge is the model's cumulative share."""
        if not 0 <= num_matches <= num_tokens:
            raise ValueError(f"matches must be in 0..tokens, got {num_matches} of {num_tokens}")
        model = self.model
        with self._lock:
            tokens, matches = self._shadow_totals.get(model, (0, 0))
            tokens, matches = tokens + num_tokens, matches + num_matches
            self._shadow_totals[model] = (tokens, matches)
        self.shadow_tokens.labels(model).inc(num_tokens)
        self.shadow_matches.labels(model).inc(num_matches)
        if tokens:
            self.record_shadow_agreement(matches / tokens)

    def publish_evaluation(self, report: EvaluationReport) -> None:
        """Expose a candidate's evaluation curves (replacing that candidate's previous report)."""
        self._evaluations.publish(report)

    # --- engine hooks -------------------------------------------------------------------
    def on_step(self, outputs: Sequence[RequestOutput], stats: StepStats) -> None:
        """After every engine step: count the tokens new since the last step, update queue gauges."""
        model = self.model
        exit_layers: list[int] = []
        num_breaches = prompt_tokens = 0
        with self._lock:
            for output in outputs:
                seen = self._tokens_seen.get(output.request_id)
                if seen is None:
                    seen = 0
                    prompt_tokens += len(output.prompt_token_ids)
                new = output.token_stats[seen:]
                exit_layers += [token.exit_layer for token in new]
                num_breaches += sum(token.is_breach for token in new)
                if output.finished:
                    self._tokens_seen.pop(output.request_id, None)
                else:
                    self._tokens_seen[output.request_id] = len(output.token_stats)
        self._exit_layers.observe(model, exit_layers)
        self.generated_tokens.labels(model).inc(len(exit_layers))
        self.breaches.labels(model).inc(num_breaches)
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.running.labels(model).set(stats.num_running)
        self.waiting.labels(model).set(stats.num_waiting)
        self.kv_cache_usage.labels(model).set(stats.kv_cache_usage)
        self.batch_size.labels(model).set(stats.num_prefills + stats.num_decodes)
        if self.vllm is not None:
            self.vllm.on_step(outputs, stats)

    def on_request_done(self, output: RequestOutput, status: str) -> None:
        """When a request ends for any reason; latencies only from requests that produced tokens."""
        model = self.model
        with self._lock:
            self._tokens_seen.pop(output.request_id, None)
        if self.vllm is not None:
            self.vllm.on_request_done(output)
        self.requests.labels(model, status).inc()
        if output.first_token_time is None:
            return
        self.ttft.labels(model).observe(output.first_token_time - output.arrival_time)
        if output.finish_time is None:
            return
        self.latency.labels(model).observe(output.finish_time - output.arrival_time)
        if len(output.token_ids) > 1:
            self.tpot.labels(model).observe(
                (output.finish_time - output.first_token_time) / (len(output.token_ids) - 1)
            )
