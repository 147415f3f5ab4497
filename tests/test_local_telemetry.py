"""A worker's /metrics text -> Telemetry, against the worker's real metrics module."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from helios_operator.local.telemetry import MetricsError, WorkerCounters, read_counters, telemetry_between
from helios_worker.gpu import GpuTelemetry
from helios_worker.metrics import WorkerMetrics
from helios_worker.stats import RequestOutput, StepStats, TokenStats

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
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


def _worker(layers_loaded: int = 4) -> WorkerMetrics:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, "ee-tiny", num_layers_total=8, telemetry=GpuTelemetry(reason="test: no GPU"))
    metrics.set_layers(layers_loaded, 8)
    _REGISTRIES[id(metrics)] = registry
    return metrics


def _serve(metrics: WorkerMetrics, request_id: str, exits: list[int], breaches: int) -> None:
    tokens = [
        TokenStats(token_id=1, exit_layer=layer, confidence=0.5, is_breach=index < breaches)
        for index, layer in enumerate(exits)
    ]
    output = RequestOutput(request_id=request_id, prompt_token_ids=[1, 2], token_ids=[1] * len(exits))
    output.token_stats = tokens
    output.finished = True
    metrics.on_step([output], STEP)
    metrics.on_request_done(output, "ok")


def _text(metrics: WorkerMetrics) -> str:
    """What the worker's /metrics serves: ``generate_latest`` of its registry."""
    return generate_latest(_REGISTRIES[id(metrics)]).decode()


def test_a_fresh_worker_reads_as_zero_traffic():
    counters = read_counters(_text(_worker()))
    assert (counters.layers, counters.layers_total, counters.tokens, counters.requests) == (4, 8, 0, 0)
    telemetry = telemetry_between(WorkerCounters.zero(4), counters, "ee-tiny", NOW)
    assert telemetry.num_new_tokens == 0 and telemetry.exit_histogram == [0, 0, 0, 0]


def test_counts_since_the_previous_scrape_with_exit_histogram():
    metrics = _worker()
    _serve(metrics, "a", [1, 2, 4], breaches=1)
    first = read_counters(_text(metrics))
    _serve(metrics, "b", [1, 1, 3, 4, 4], breaches=2)
    second = read_counters(_text(metrics))

    telemetry = telemetry_between(first, second, "ee-tiny", NOW)
    assert telemetry.model == "ee-tiny" and telemetry.layers == 4
    assert telemetry.num_new_tokens == 5
    assert telemetry.num_new_breaches == 2
    assert telemetry.num_new_requests == 1
    assert telemetry.exit_histogram == [2, 0, 1, 2]

    from_start = telemetry_between(WorkerCounters.zero(4), second, "ee-tiny", NOW)
    assert from_start.num_new_tokens == 8 and from_start.exit_histogram == [3, 1, 1, 3]


def test_a_restarted_worker_counts_from_zero():
    metrics = _worker()
    _serve(metrics, "a", [1, 2, 3, 4, 4, 4], breaches=0)
    before = read_counters(_text(metrics))
    fresh = _worker()
    _serve(fresh, "b", [2, 2], breaches=0)
    telemetry = telemetry_between(before, read_counters(_text(fresh)), "ee-tiny", NOW)
    assert telemetry.num_new_tokens == 2 and telemetry.exit_histogram == [0, 2, 0, 0]


def test_histogram_is_unknown_when_tokens_exited_beyond_the_loaded_layers():
    metrics = _worker(layers_loaded=8)
    _serve(metrics, "a", [7, 8], breaches=0)
    metrics.set_layers(4, 8)  # dropped layers between two scrapes
    telemetry = telemetry_between(WorkerCounters.zero(4), read_counters(_text(metrics)), "ee-tiny", NOW)
    assert telemetry.num_new_tokens == 2 and telemetry.exit_histogram == []


def test_text_that_is_not_a_helios_worker_is_an_error():
    with pytest.raises(MetricsError, match="helios_layers_loaded"):
        read_counters("# TYPE up gauge\nup 1\n")
    with pytest.raises(MetricsError, match="unreadable"):
        read_counters("helios_layers_loaded{model= 4\n")
