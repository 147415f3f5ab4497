"""vLLM's metric names beside ours: the names, types and labels gateways and autoscalers read,
and values that agree with the helios_* ones fed by the same engine steps."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from helios_worker.engine import Engine, EngineConfig
from helios_worker.loading import load_model
from helios_worker.metrics import WorkerMetrics
from helios_worker.sampling import SamplingParams
from helios_worker.server.settings import ServerSettings
from tests.test_server_harness import live_server

EXPECTED = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
}


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """(sample name, label value) -> value, for the model label of either naming."""
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = sample.labels.get("model_name", sample.labels.get("model", ""))
            if "le" not in sample.labels and "status" not in sample.labels:
                found[(sample.name, label)] = sample.value
    return found


def test_vllm_names_types_and_values_agree_with_ours(tiny_model):
    registry = CollectorRegistry()
    loaded = load_model(str(tiny_model("llama")), layers=2, name="tiny")
    metrics = WorkerMetrics.for_model(registry, loaded, vllm=True)
    engine = Engine(loaded, EngineConfig(max_batch_size=2, exit_threshold=0.3))
    prompts = [loaded.tokenizer(p).input_ids for p in ("the quick brown", "def add(a, b):", "early exit lets")]
    for prompt in prompts:  # three requests, two slots: one waits
        engine.add_request(prompt, SamplingParams(max_new_tokens=6, ignore_eos=True))
    waiting_seen = []
    while engine.has_unfinished():
        outputs, stats = engine.step()
        metrics.on_step(outputs, stats)
        for output in outputs:
            if output.finished:
                metrics.on_request_done(output, "ok")
        got = samples(registry)
        assert got[("vllm:num_requests_running", "tiny")] == got[("helios_num_requests_running", "tiny")]
        assert got[("vllm:num_requests_waiting", "tiny")] == got[("helios_num_requests_waiting", "tiny")]
        assert got[("vllm:kv_cache_usage_perc", "tiny")] == got[("helios_kv_cache_usage_ratio", "tiny")]
        waiting_seen.append(got[("vllm:num_requests_waiting", "tiny")])
    assert max(waiting_seen) == 1
    got = samples(registry)
    types = {f.name: f.type for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert {name: types[name] for name in EXPECTED} == EXPECTED
    assert got[("vllm:generation_tokens_total", "tiny")] == got[("helios_generated_tokens_total", "tiny")] == 18
    assert got[("vllm:prompt_tokens_total", "tiny")] == got[("helios_prompt_tokens_total", "tiny")]
    assert got[("vllm:prompt_tokens_total", "tiny")] == sum(map(len, prompts))
    ttft, ours = ("vllm:time_to_first_token_seconds", "tiny"), ("helios_time_to_first_token_seconds", "tiny")
    assert got[(ttft[0] + "_count", "tiny")] == got[(ours[0] + "_count", "tiny")] == 3
    assert got[(ttft[0] + "_sum", "tiny")] == got[(ours[0] + "_sum", "tiny")]
    assert got[("vllm:e2e_request_latency_seconds_sum", "tiny")] == got[("helios_request_latency_seconds_sum", "tiny")]
    # one inter-token gap per token after each request's first
    assert got[("vllm:inter_token_latency_seconds_count", "tiny")] == 18 - 3
    assert got[("vllm:inter_token_latency_seconds_sum", "tiny")] > 0


def test_a_worker_serves_them_unless_turned_off(tiny_model):
    settings = ServerSettings(model=str(tiny_model("llama")), served_model_name="tiny", layers=2)
    for enabled in (True, False):
        worker = live_server(settings.model_copy(update={"vllm_metrics": enabled}))
        with worker as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
            assert client.post("/v1/completions", json={"prompt": "the quick", "max_tokens": 3}).status_code == 200
            text = client.get("/metrics").text
        # (the harness's recorder takes the step callbacks, so values are checked above, not here)
        assert all((f"# TYPE {name}" in text) is enabled for name in EXPECTED)
        assert "# TYPE helios_generated_tokens_total counter" in text
