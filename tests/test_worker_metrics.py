"""The one parser of a worker's /metrics, against the worker's real metrics module and hand-written text."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from helios_operator.worker_metrics import (
    Counts,
    MetricsError,
    WorkerCounters,
    counter_delta,
    counts_between,
    exits_per_layer,
    read_counters,
)
from helios_worker.gpu import GpuTelemetry
from helios_worker.metrics import WorkerMetrics
from helios_worker.stats import RequestOutput, StepStats, TokenStats

_REGISTRIES: dict[int, CollectorRegistry] = {}
STEP = StepStats(
    num_prefills=0,
    num_decodes=1,
    num_waiting=0,
    num_running=1,
    num_layer_evals=0,
    duration_seconds=0.01,
    kv_cache_usage=0,
)


def worker(layers_loaded: int = 4) -> WorkerMetrics:
    """A worker's metrics for ``ee-tiny`` (8 layers) with ``layers_loaded`` in use, no traffic yet."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, "ee-tiny", num_layers_total=8, telemetry=GpuTelemetry(reason="test: no GPU"))
    metrics.set_layers(layers_loaded, 8)
    _REGISTRIES[id(metrics)] = registry
    return metrics


def serve(metrics: WorkerMetrics, request_id: str, exits: list[int], breaches: int) -> None:
    """One finished request whose tokens exited at ``exits``; the first ``breaches`` of them breached."""
    tokens = [
        TokenStats(token_id=1, exit_layer=layer, confidence=0.5, is_breach=index < breaches)
        for index, layer in enumerate(exits)
    ]
    output = RequestOutput(request_id=request_id, prompt_token_ids=[1, 2], token_ids=[1] * len(exits))
    output.token_stats = tokens
    output.finished = True
    metrics.on_step([output], STEP)
    metrics.on_request_done(output, "ok")


def text(metrics: WorkerMetrics) -> str:
    """What the worker's /metrics serves: ``generate_latest`` of its registry."""
    return generate_latest(_REGISTRIES[id(metrics)]).decode()


def exposition(tokens: int, breaches: int, buckets: list[int] | None = None, model: str = "a", layers: int = 3) -> str:
    """Hand-written exposition: counters with a ``model`` label, unlabelled layer gauges, no model info."""
    lines = [
        "# TYPE helios_generated_tokens_total counter",
        f'helios_generated_tokens_total{{model="{model}"}} {tokens}',
        "# TYPE helios_confidence_breaches_total counter",
        f'helios_confidence_breaches_total{{model="{model}"}} {breaches}',
        "# TYPE helios_requests_total counter",
        f'helios_requests_total{{model="{model}",status="ok"}} 3',
        f'helios_requests_total{{model="{model}",status="error"}} 1',
        "# TYPE helios_layers_loaded gauge",
        f"helios_layers_loaded {layers}",
        "# TYPE helios_layers_total gauge",
        "helios_layers_total 8",
    ]
    if buckets is not None:
        lines.append("# TYPE helios_exit_layer histogram")
        for le, count in enumerate(buckets, start=1):
            lines.append(f'helios_exit_layer_bucket{{model="{model}",le="{le}.0"}} {count}')
        lines += [f'helios_exit_layer_bucket{{model="{model}",le="+Inf"}} {buckets[-1]}']
        lines += [f'helios_exit_layer_count{{model="{model}"}} {buckets[-1]}', 'helios_exit_layer_sum{model="a"} 1']
    return "\n".join(lines) + "\n"


# --- parsing ---------------------------------------------------------------------------------------


def test_a_fresh_worker_parses_as_zero_traffic_of_its_model():
    # No request yet: the labelled counters have no children, but helios_model_info names the model.
    counters = read_counters(text(worker()))
    assert (counters.model, counters.layers, counters.layers_total) == ("ee-tiny", 4, 8)
    assert (counters.tokens, counters.breaches, counters.requests) == (0, 0, 0)
    assert exits_per_layer(counters.exit_buckets, counters.layers) == [0, 0, 0, 0]


def test_reads_counters_layers_and_buckets_summed_over_labels():
    counters = read_counters(exposition(100, 7, [50, 80, 100]))
    assert (counters.model, counters.layers, counters.layers_total) == ("a", 3, 8)
    assert (counters.tokens, counters.breaches, counters.requests) == (100, 7, 4)
    assert counters.exit_buckets == {1.0: 50, 2.0: 80, 3.0: 100}  # +Inf is not a layer


def test_model_info_names_the_model_after_an_in_process_switch():
    metrics = worker()
    serve(metrics, "a", [1, 2], breaches=0)
    metrics.set_model("ee-other", num_layers_total=8)
    metrics.set_layers(6, 8)
    counters = read_counters(text(metrics))
    # Counters of the old model stay (and still count), but the model served is the new one.
    assert (counters.model, counters.layers, counters.tokens) == ("ee-other", 6, 2)


def test_without_model_info_the_model_label_names_the_model_if_it_is_one():
    assert read_counters(exposition(1, 0, model="b")).model == "b"
    two_models = exposition(1, 0) + 'helios_prompt_tokens_total{model="b"} 5\n'
    assert read_counters(two_models).model is None
    assert read_counters("helios_layers_loaded 3\n") == WorkerCounters(layers=3)


def test_text_that_is_not_a_helios_worker_is_an_error():
    with pytest.raises(MetricsError, match="helios_layers_loaded"):
        read_counters("# TYPE up gauge\nup 1\n")
    with pytest.raises(MetricsError, match="helios_layers_loaded"):
        read_counters("")
    with pytest.raises(MetricsError, match="unreadable"):
        read_counters("helios_layers_loaded{model= 4\n")


# --- counts between scrapes ------------------------------------------------------------------------


def test_exits_per_layer_from_cumulative_buckets():
    assert exits_per_layer({1.0: 50, 2.0: 80, 3.0: 100, 4.0: 100}, 3) == [50, 30, 20]
    assert exits_per_layer({1.0: 50, 3.0: 100}, 3) is None  # a missing bucket: unknown
    assert exits_per_layer({}, 2) is None


def test_counter_delta_treats_a_decrease_as_a_restart():
    assert counter_delta(120, 100) == 20
    assert counter_delta(100, 100) == 0
    assert counter_delta(20, 500) == 20


def test_counts_between_two_scrapes_of_one_worker():
    metrics = worker()
    serve(metrics, "a", [1, 2, 4], breaches=1)
    first = read_counters(text(metrics))
    serve(metrics, "b", [1, 1, 3, 4, 4], breaches=2)
    counts = counts_between(first, read_counters(text(metrics)))
    assert (counts.tokens, counts.breaches, counts.requests) == (5, 2, 1)
    assert counts.exits == [2, 0, 1, 2]
    assert counts_between(WorkerCounters.zero(4), first).exits == [1, 1, 0, 1]


def test_a_restarted_worker_counts_everything_since_the_restart():
    metrics = worker()
    serve(metrics, "a", [1, 2, 3, 4, 4, 4], breaches=3)
    before = read_counters(text(metrics))
    fresh = worker()
    serve(fresh, "b", [2, 2], breaches=1)
    counts = counts_between(before, read_counters(text(fresh)))
    assert (counts.tokens, counts.breaches, counts.requests) == (2, 1, 1)
    assert counts.exits == [0, 2, 0, 0]


def test_counts_add_up_and_an_unknown_histogram_stays_unknown():
    known = Counts(tokens=3, breaches=1, exits=[1.0, 2.0])
    total = known + Counts(tokens=2, requests=1, exits=[2.0, 0.0])
    assert (total.tokens, total.breaches, total.requests, total.exits) == (5, 1, 1, [3.0, 2.0])
    assert (total + Counts(tokens=1)).exits is None
