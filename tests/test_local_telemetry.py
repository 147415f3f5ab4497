"""A local worker's /metrics -> Telemetry (the run's baseline policy), against the worker's real metrics module.

Parsing itself is tested in ``test_worker_metrics``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from helios_operator.local.telemetry import WorkerCounters, read_counters, telemetry_between
from tests.test_worker_metrics import serve, text, worker

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)


def test_a_fresh_worker_reads_as_zero_traffic():
    counters = read_counters(text(worker()))
    assert (counters.layers, counters.layers_total, counters.tokens, counters.requests) == (4, 8, 0, 0)
    telemetry = telemetry_between(WorkerCounters.zero(4), counters, "ee-tiny", NOW)
    assert telemetry.num_new_tokens == 0 and telemetry.exit_histogram == [0, 0, 0, 0]


def test_counts_since_the_previous_scrape_with_exit_histogram():
    metrics = worker()
    serve(metrics, "a", [1, 2, 4], breaches=1)
    first = read_counters(text(metrics))
    serve(metrics, "b", [1, 1, 3, 4, 4], breaches=2)
    second = read_counters(text(metrics))

    telemetry = telemetry_between(first, second, "ee-tiny", NOW)
    assert telemetry.model == "ee-tiny" and telemetry.layers == 4
    assert telemetry.num_new_tokens == 5
    assert telemetry.num_new_breaches == 2
    assert telemetry.num_new_requests == 1
    assert telemetry.exit_histogram == [2, 0, 1, 2]

    from_start = telemetry_between(WorkerCounters.zero(4), second, "ee-tiny", NOW)
    assert from_start.num_new_tokens == 8 and from_start.exit_histogram == [3, 1, 1, 3]


def test_a_restarted_worker_counts_from_zero():
    metrics = worker()
    serve(metrics, "a", [1, 2, 3, 4, 4, 4], breaches=0)
    before = read_counters(text(metrics))
    fresh = worker()
    serve(fresh, "b", [2, 2], breaches=0)
    telemetry = telemetry_between(before, read_counters(text(fresh)), "ee-tiny", NOW)
    assert telemetry.num_new_tokens == 2 and telemetry.exit_histogram == [0, 2, 0, 0]


def test_histogram_is_unknown_when_tokens_exited_beyond_the_loaded_layers():
    metrics = worker(layers_loaded=8)
    serve(metrics, "a", [7, 8], breaches=0)
    metrics.set_layers(4, 8)  # dropped layers between two scrapes
    telemetry = telemetry_between(WorkerCounters.zero(4), read_counters(text(metrics)), "ee-tiny", NOW)
    assert telemetry.num_new_tokens == 2 and telemetry.exit_histogram == []
