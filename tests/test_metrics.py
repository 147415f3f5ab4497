"""Worker metrics: engine stats in, Prometheus exposition out, parsed back and checked."""

from __future__ import annotations

import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from helios_worker.gpu import GpuTelemetry
from helios_worker.metrics import WorkerMetrics
from helios_worker.stats import RequestOutput, StepStats, TokenStats
from tests.report_factory import make_report
from tests.test_gpu import FakeBoard, FakeNVML

N = 4


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, parsed from the text format."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names(samples: dict) -> set[str]:
    return {name for name, _ in samples}


def token(exit_layer: int, is_breach: bool = False) -> TokenStats:
    return TokenStats(token_id=7, exit_layer=exit_layer, confidence=0.5, is_breach=is_breach)


def step(num_running: int = 2, num_waiting: int = 1) -> StepStats:
    return StepStats(1, 1, num_waiting, num_running, 6, 0.01, 0.25)


@pytest.fixture
def unavailable() -> GpuTelemetry:
    return GpuTelemetry(reason="no NVML in this test")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_steps_count_tokens_exits_breaches_and_prompts(registry, unavailable) -> None:
    metrics = WorkerMetrics(registry, "alpha", num_layers_total=N, telemetry=unavailable)
    a = RequestOutput("a", [1, 2, 3], arrival_time=1.0)
    b = RequestOutput("b", [1, 2], arrival_time=1.0)
    a.token_stats.append(token(1))
    b.token_stats.append(token(3, is_breach=True))
    metrics.on_step([a, b], step())
    a.token_stats.append(token(3, is_breach=True))
    a.finished = True
    metrics.on_step([a], step(num_running=1, num_waiting=0))
    b.token_stats.append(token(4))  # the same request seen again: only its new token counts
    metrics.on_step([b], step(num_running=1, num_waiting=0))

    samples = scrape(registry)
    assert value(samples, "helios_generated_tokens_total", model="alpha") == 4
    assert value(samples, "helios_prompt_tokens_total", model="alpha") == 5
    assert value(samples, "helios_confidence_breaches_total", model="alpha") == 2
    # exit layers 1, 3, 3, 4: one bucket per layer, cumulative
    buckets = [value(samples, "helios_exit_layer_bucket", model="alpha", le=f"{layer}.0") for layer in range(1, 5)]
    assert buckets == [1, 1, 3, 4]
    assert value(samples, "helios_exit_layer_bucket", model="alpha", le="+Inf") == 4
    assert value(samples, "helios_exit_layer_count", model="alpha") == 4
    assert value(samples, "helios_exit_layer_sum", model="alpha") == 11
    assert value(samples, "helios_num_requests_running", model="alpha") == 1
    assert value(samples, "helios_num_requests_waiting", model="alpha") == 0
    assert value(samples, "helios_kv_cache_usage_ratio", model="alpha") == 0.25
    assert value(samples, "helios_batch_size", model="alpha") == 2


def test_request_done_records_status_and_latencies(registry, unavailable) -> None:
    metrics = WorkerMetrics(registry, "alpha", num_layers_total=N, telemetry=unavailable)
    done = RequestOutput("a", [1], token_ids=[5, 6, 7], arrival_time=10.0, first_token_time=10.03, finish_time=10.23)
    metrics.on_request_done(done, "ok")
    metrics.on_request_done(RequestOutput("b", [1], arrival_time=10.0), "error")  # failed before any token
    samples = scrape(registry)
    assert value(samples, "helios_requests_total", model="alpha", status="ok") == 1
    assert value(samples, "helios_requests_total", model="alpha", status="error") == 1
    assert value(samples, "helios_time_to_first_token_seconds_count", model="alpha") == 1
    assert value(samples, "helios_time_to_first_token_seconds_sum", model="alpha") == pytest.approx(0.03)
    assert value(samples, "helios_time_to_first_token_seconds_bucket", model="alpha", le="0.025") == 0
    assert value(samples, "helios_time_to_first_token_seconds_bucket", model="alpha", le="0.05") == 1
    assert value(samples, "helios_time_per_output_token_seconds_sum", model="alpha") == pytest.approx(0.1)
    assert value(samples, "helios_request_latency_seconds_sum", model="alpha") == pytest.approx(0.23)


def test_model_layers_threshold_shadow_and_no_gpu(registry, unavailable) -> None:
    metrics = WorkerMetrics(
        registry, "alpha", num_layers_total=N, revision="abc", architecture="llama", telemetry=unavailable
    )
    metrics.set_layers(2, N)
    metrics.set_exit_threshold(0.9)
    metrics.record_shadow_agreement(0.97)
    samples = scrape(registry)
    assert value(samples, "helios_model_info", model="alpha", revision="abc", architecture="llama") == 1
    assert value(samples, "helios_layers_loaded", model="alpha") == 2
    assert value(samples, "helios_layers_total", model="alpha") == N
    assert value(samples, "helios_exit_threshold", model="alpha") == 0.9
    assert value(samples, "helios_shadow_agreement", model="alpha") == 0.97
    assert value(samples, "helios_gpu_available", model="alpha") == 0
    assert not names(samples) & {
        "helios_gpu_memory_used_bytes",
        "helios_gpu_power_watts",
        "helios_gpu_energy_joules_total",
    }
    with pytest.raises(ValueError, match="use set_model"):
        metrics.set_layers(2, 8)
    with pytest.raises(ValueError, match=r"in 1\.\.4"):
        metrics.set_layers(5, N)


def test_default_telemetry_is_the_real_one_and_absent_here(registry) -> None:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pytest.skip("this machine has a working NVML")
    WorkerMetrics(registry, "alpha", num_layers_total=N)
    assert value(scrape(registry), "helios_gpu_available", model="alpha") == 0


def test_gpu_gauges_when_nvml_works(registry, monkeypatch: pytest.MonkeyPatch) -> None:
    board = FakeBoard("H100", "GPU-1", 3 * 2**30, 300_000, 1_000_000)
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML([board]).module())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    WorkerMetrics(registry, "alpha", num_layers_total=N, telemetry=GpuTelemetry.open())
    board.energy_mj += 2500
    samples = scrape(registry)
    assert value(samples, "helios_gpu_available", model="alpha") == 1
    assert value(samples, "helios_gpu_memory_used_bytes", model="alpha", gpu="0") == 3 * 2**30
    assert value(samples, "helios_gpu_power_watts", model="alpha", gpu="0") == 300.0
    assert value(samples, "helios_gpu_energy_joules_total", model="alpha", gpu="0") == pytest.approx(2.5)


def test_switching_model_moves_state_gauges_and_keeps_counters(registry, unavailable) -> None:
    metrics = WorkerMetrics(registry, "alpha", num_layers_total=N, telemetry=unavailable)
    a = RequestOutput("a", [1], token_stats=[token(2)], finished=True)
    metrics.on_step([a], step())
    metrics.set_model("beta", num_layers_total=2, architecture="opt")
    metrics.on_step([RequestOutput("b", [1], token_stats=[token(2)])], step(num_running=3))
    samples = scrape(registry)
    assert value(samples, "helios_generated_tokens_total", model="alpha") == 1
    assert value(samples, "helios_num_requests_running", model="beta") == 3
    assert ("helios_num_requests_running", (("model", "alpha"),)) not in samples
    assert ("helios_model_info", (("architecture", "unknown"), ("model", "alpha"), ("revision", ""))) not in samples
    assert value(samples, "helios_model_info", model="beta", revision="", architecture="opt") == 1
    assert value(samples, "helios_exit_layer_bucket", model="beta", le="2.0") == 1
    assert ("helios_exit_layer_bucket", (("le", "3.0"), ("model", "beta"))) not in samples  # beta has 2 layers
    assert value(samples, "helios_exit_layer_bucket", model="alpha", le="4.0") == 1


def test_published_evaluations_become_per_layer_gauges(registry, unavailable) -> None:
    metrics = WorkerMetrics(registry, "alpha", num_layers_total=N, telemetry=unavailable)
    metrics.publish_evaluation(
        make_report("alpha", exit_histogram=(5, 3, 1, 1), tokens_per_second=50.0, tokens_per_count=1)
    )
    metrics.publish_evaluation(make_report("beta", exit_histogram=(8, 2), greedy_agreement=[0.9, 1.0]))
    samples = scrape(registry)
    assert value(samples, "helios_evaluation_greedy_agreement", model="beta", layer="1") == 0.9
    assert value(samples, "helios_evaluation_exit_tokens", model="alpha", layer="2") == 3
    assert value(samples, "helios_evaluation_breach_rate", model="alpha", layer="1") == pytest.approx(0.5)
    assert value(samples, "helios_evaluation_tokens_per_second", model="alpha") == 50.0
    assert ("helios_evaluation_agreement", (("layer", "3"), ("model", "beta"))) not in samples
    assert ("helios_evaluation_agreement", (("layer", "4"), ("model", "alpha"))) in samples


def test_metric_names_follow_the_conventions(registry, unavailable) -> None:
    metrics = WorkerMetrics(registry, "alpha", num_layers_total=N, telemetry=unavailable)
    metrics.on_step([RequestOutput("a", [1], token_stats=[token(1)])], step())
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        assert family.name.startswith("helios_") and ":" not in family.name
        for sample in family.samples:
            assert "model" in sample.labels, sample.name
