"""The metric names the serving ecosystem already reads, as vLLM spells them.

KEDA, KServe, llm-d's workload-variant-autoscaler and the Gateway API Inference Extension's
endpoint picker scrape ``vllm:*`` metrics labelled ``model_name``. HELIOS workers export
these beside their own ``helios_*`` names (``--vllm-metrics``, on by default), with vLLM's
semantics:

| vLLM name | type | from |
|---|---|---|
| ``vllm:num_requests_running`` | gauge | rows in the engine's running batch |
| ``vllm:num_requests_waiting`` | gauge | requests queued for a KV-cache slot |
| ``vllm:kv_cache_usage_perc`` | gauge | used KV-cache token slots over capacity, 0..1 (1 = 100%) |
| ``vllm:time_to_first_token_seconds`` | histogram | arrival to first token, per request |
| ``vllm:inter_token_latency_seconds`` | histogram | time between two tokens of a request, per token |
| ``vllm:e2e_request_latency_seconds`` | histogram | arrival to finish, per request |
| ``vllm:prompt_tokens_total`` | counter | prompt tokens of admitted requests |
| ``vllm:generation_tokens_total`` | counter | generated tokens |

Inter-token latency is timed at engine-step granularity, as vLLM's engine does: a token's
time is the end of the step that produced it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from helios_worker.stats import RequestOutput, StepStats

LABEL = ["model_name"]
# bucket boundaries (seconds) over the ranges vLLM's histograms cover
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip  # noqa: E501
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip  # noqa: E501
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0)


class VllmMetrics:
    def __init__(self, registry: CollectorRegistry, model_name: str, clock=time.perf_counter) -> None:
        self.model_name = model_name
        self.clock = clock
        self.running = Gauge("vllm:num_requests_running", "Requests in the running batch.", LABEL, registry=registry)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting for a slot.", LABEL, registry=registry)
        self.kv_cache_usage = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", LABEL, registry=registry
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", LABEL, buckets=TTFT_BUCKETS, registry=registry
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Inter-token latency.", LABEL, buckets=ITL_BUCKETS, registry=registry
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency.", LABEL, buckets=E2E_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", LABEL, registry=registry)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generation tokens processed.", LABEL, registry=registry
        )
        self._last_token_at: dict[str, tuple[int, float]] = {}  # request -> (tokens seen, time of the last)
        self._lock = threading.Lock()

    def on_step(self, outputs: Sequence[RequestOutput], stats: StepStats) -> None:
        now = self.clock()
        model = self.model_name
        generated = prompt = 0
        gaps: list[float] = []
        with self._lock:
            for output in outputs:
                seen, last = self._last_token_at.get(output.request_id, (0, None))
                if last is None:
                    prompt += len(output.prompt_token_ids)
                new = len(output.token_ids) - seen
                generated += new
                if last is not None and new > 0:
                    gaps += [(now - last) / new] * new
                if output.finished:
                    self._last_token_at.pop(output.request_id, None)
                else:
                    self._last_token_at[output.request_id] = (len(output.token_ids), now)
        for gap in gaps:
            self.itl.labels(model).observe(gap)
        self.generation_tokens.labels(model).inc(generated)
        self.prompt_tokens.labels(model).inc(prompt)
        self.running.labels(model).set(stats.num_running)
        self.waiting.labels(model).set(stats.num_waiting)
        self.kv_cache_usage.labels(model).set(stats.kv_cache_usage)

    def on_request_done(self, output: RequestOutput) -> None:
        with self._lock:
            self._last_token_at.pop(output.request_id, None)
        if output.first_token_time is None:
            return
        self.ttft.labels(self.model_name).observe(output.first_token_time - output.arrival_time)
        if output.finish_time is not None:
            self.e2e.labels(self.model_name).observe(output.finish_time - output.arrival_time)

    def set_model(self, model_name: str) -> None:
        """A model switch: the state gauges move to the new label."""
        if model_name != self.model_name:
            for gauge in (self.running, self.waiting, self.kv_cache_usage):
                with contextlib.suppress(KeyError):  # not set yet
                    gauge.remove(self.model_name)
        self.model_name = model_name
