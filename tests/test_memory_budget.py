"""Freed memory becomes batch: the budget sizes the KV cache, layer changes stay inside it, and
the policy predicts exactly the batch a worker holds."""

from __future__ import annotations

import httpx
import pytest
import torch

from helios_contracts.memory_model import (
    MAX_NUM_SEQS,
    LayerChangeRefused,
    MemoryModelError,
    ModelShape,
    activation_reserve,
    bytes_per_sequence,
    plan_memory,
)
from helios_operator.k8s import manifests
from helios_operator.policy.memory import max_batch_size, weight_bytes
from helios_operator.spec import HeliosDeploymentSpec
from helios_worker.device import parse_bytes, resolve_budget, resolve_device, resolve_dtype
from helios_worker.engine import Engine, EngineConfig
from helios_worker.evaluation import evaluate_candidate
from helios_worker.loading import load_model
from helios_worker.sampling import SamplingParams
from helios_worker.server.settings import ServerSettings
from tests.test_server_harness import live_server

SEQ_LEN = 64
OWNER = {
    "apiVersion": "helios.dev/v1alpha1",
    "kind": "HeliosDeployment",
    "metadata": {"name": "d", "namespace": "n", "uid": "u"},
}
GREEDY = SamplingParams(max_new_tokens=8, ignore_eos=True)


def budget_for(loaded, layers: int, sequences: int, max_batch_size: int = 64) -> int:
    """The smallest budget holding exactly ``sequences`` at ``layers`` layers (from the plan's own parts)."""
    plan = plan_memory(
        loaded.shape,
        layers,
        None,
        itemsize=loaded.dtype.itemsize,
        max_seq_len=SEQ_LEN,
        max_batch_size=max_batch_size,
        max_prefill_tokens=8192,
    )
    return plan.weight_bytes + plan.reserve_bytes + sequences * plan.bytes_per_sequence


def allocated_bytes(engine: Engine) -> tuple[int, int]:
    """(weight bytes, KV cache + exit-state bytes) as the tensors really are."""
    seen: dict[int, int] = {}
    for parameter in engine.loaded.model.parameters():
        seen[parameter.data_ptr()] = parameter.numel() * parameter.element_size()
    cache = engine.cache.nbytes + engine.exit_hidden.numel() * engine.exit_hidden.element_size()
    return sum(seen.values()), cache


def test_the_formula_by_hand():
    shape = ModelShape(
        num_layers_total=30,
        hidden_size=576,
        intermediate_size=1536,
        vocab_size=49152,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        params_per_layer=3_540_096,
        params_shared=28_311_552,
    )
    # SmolLM2-135M at 15 layers in float32, 2048 tokens: K+V of 15 layers (2*15*3*64) plus the exit state (576)
    assert bytes_per_sequence(shape, 15, 2048, 4) == 2048 * (5760 + 576) * 4
    reserve = activation_reserve(shape, 8192, 16, 4)
    assert reserve == 8192 * (4 * 576 + 15 * 64 + 2 * 1536) * 4 + 2 * 16 * 49152 * 4
    budget = 1 << 30
    plan = plan_memory(shape, 15, budget, itemsize=4, max_seq_len=2048, max_batch_size=1000, max_prefill_tokens=8192)
    weights = (28_311_552 + 15 * 3_540_096) * 4
    assert plan.weight_bytes == weights
    assert plan.max_num_seqs == (budget - weights - plan.reserve_bytes) // (2048 * 6336 * 4)
    with pytest.raises(MemoryModelError, match="holds no sequence"):
        plan_memory(shape, 30, 500 << 20, itemsize=4, max_seq_len=2048, max_batch_size=16, max_prefill_tokens=8192)


@pytest.mark.parametrize(("arch", "dtype"), [("llama", torch.float32), ("qwen3", torch.bfloat16), ("gpt2", None)])
def test_worker_allocates_what_the_policy_predicts(tiny_model, arch, dtype):
    loaded = load_model(str(tiny_model(arch)), layers=3, dtype=dtype)
    # the cap the operator gives workers with a budget, so that the reserve is the policy's too
    budget = budget_for(loaded, 3, 5, max_batch_size=MAX_NUM_SEQS) + 100  # a little over 5 sequences: still 5
    config = EngineConfig(max_seq_len=SEQ_LEN, max_batch_size=MAX_NUM_SEQS, memory_budget=budget)
    engine = Engine(loaded, config)
    plan = engine.memory_plan
    assert engine.num_slots == plan.max_num_seqs == 5
    weights, cache = allocated_bytes(engine)
    assert weights == plan.weight_bytes
    assert cache == plan.kv_cache_bytes
    # the policy's prediction comes from the evaluation report and the same module
    report = evaluate_candidate(load_model(str(tiny_model(arch)), dtype=dtype), ["the quick brown"], 4, 0.8)
    assert report.shape == loaded.shape and report.dtype == str(loaded.dtype).removeprefix("torch.")
    assert weight_bytes(report, 3) == plan.weight_bytes
    assert max_batch_size(report, 3, budget, SEQ_LEN) == 5


def test_fewer_layers_hold_more_sequences_in_the_same_budget(tiny_model):
    loaded = load_model(str(tiny_model("llama")))
    budget = budget_for(loaded, 4, 6)
    config = EngineConfig(max_seq_len=SEQ_LEN, max_batch_size=64, memory_budget=budget)
    full = Engine(loaded, config)
    half = Engine(load_model(str(tiny_model("llama")), layers=2), config)
    assert full.num_slots == 6 and half.num_slots > 6


def test_a_budgeted_engine_runs_its_capacity_and_queues_the_rest(tiny_model):
    loaded = load_model(str(tiny_model("llama")), layers=2)
    engine = Engine(
        loaded, EngineConfig(max_seq_len=SEQ_LEN, max_batch_size=64, memory_budget=budget_for(loaded, 2, 3))
    )
    prompt = loaded.tokenizer("the quick brown fox").input_ids
    for _ in range(7):
        engine.add_request(prompt, GREEDY)
    most_running = 0
    while engine.has_unfinished():
        _, stats = engine.step()
        most_running = max(most_running, stats.num_running)
        assert stats.num_running <= 3
    assert most_running == 3


def _run_with_layer_change(loaded, config, requests, at_step, layers):
    """Run ``requests`` [(prompt, params)], changing layers before step ``at_step``; tokens per request."""
    engine = Engine(loaded, config)
    ids = [engine.add_request(prompt, params) for prompt, params in requests]
    done, outcome = {}, None
    for step in range(100):
        if step == at_step:
            try:
                engine.change_layers(layers)
                outcome = engine.num_slots
            except LayerChangeRefused as error:
                outcome = error
        outputs, _ = engine.step()
        done.update({o.request_id: o for o in outputs if o.finished})
        if not engine.has_unfinished():
            break
    return [done[i].token_ids for i in ids], outcome, engine


def _prompts(loaded, *texts):
    return [(loaded.tokenizer(text).input_ids, GREEDY) for text in texts]


def test_growing_past_the_budget_is_refused_with_nothing_lost(tiny_model):
    path = str(tiny_model("llama"))
    loaded = load_model(path, layers=2)
    budget = budget_for(loaded, 4, 2)  # 2 sequences at 4 layers, more at 2
    config = EngineConfig(max_seq_len=SEQ_LEN, max_batch_size=64, memory_budget=budget, early_exit=False)
    requests = _prompts(loaded, "the quick brown", "def add(a, b):", "early exit lets")
    unchanged, _, _ = _run_with_layer_change(load_model(path, layers=2), config, requests, at_step=-1, layers=2)
    tokens, outcome, engine = _run_with_layer_change(loaded, config, requests, at_step=2, layers=4)
    assert isinstance(outcome, LayerChangeRefused) and "3 are running" in str(outcome)
    assert tokens == unchanged and engine.active_layers == 2 and loaded.num_layers_loaded == 2


def test_growing_shrinks_capacity_keeping_running_requests_and_shrinking_gives_it_back(tiny_model):
    path = str(tiny_model("llama"))
    budget = budget_for(load_model(path, layers=2), 4, 3)
    config = EngineConfig(max_seq_len=SEQ_LEN, max_batch_size=64, memory_budget=budget, early_exit=False)
    small = load_model(path, layers=2)
    before = Engine(small, config).num_slots
    assert before >= 5
    # three short requests hold slots 0-2 and leave; the two that stay sit in slots 3 and 4,
    # beyond the 3 slots that 4 layers leave room for: growing must move them
    short = [(ids, SamplingParams(max_new_tokens=2, ignore_eos=True)) for ids, _ in _prompts(small, "a", "b", "c")]
    requests = short + _prompts(small, "the quick brown", "def add(a, b):")
    free = EngineConfig(max_seq_len=SEQ_LEN, max_batch_size=64, early_exit=False)  # no budget: no slot moves
    expected, _, _ = _run_with_layer_change(load_model(path, layers=2), free, requests, at_step=3, layers=4)
    tokens, slots_after, engine = _run_with_layer_change(small, config, requests, at_step=3, layers=4)
    assert slots_after == 3 and tokens == expected
    engine.change_layers(2)
    assert engine.num_slots == before  # the freed layers' bytes are slots again


def test_device_dtype_and_budget_resolve_from_auto(monkeypatch):
    assert resolve_device("auto") == torch.device("cpu")  # no GPU on this machine
    assert ServerSettings(model="m").device == "auto" and ServerSettings(model="m").memory_budget == "auto"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert parse_bytes("8Gi") == 8 << 30 and parse_bytes("1.5G") == 1_500_000_000
    assert resolve_budget("512Mi", torch.device("cpu"), 0.9) == 512 << 20
    assert resolve_budget("none", torch.device("cpu"), 0.9) is None
    assert 0 < resolve_budget("auto", torch.device("cpu"), 0.9) < 1 << 50
    with pytest.raises(ValueError, match="8Gi"):
        parse_bytes("lots")


def test_a_gpu_candidate_pod_gets_cuda_bf16_and_its_budget():
    spec = HeliosDeploymentSpec.model_validate(
        {
            "candidates": [{"name": "a", "model": "org/a"}],
            "memoryBudget": "20Gi",
            "contextTokens": 4096,
            "worker": {"resources": {"limits": {"nvidia.com/gpu": 1}}},
        }
    )
    deployment = manifests.build_deployment(OWNER, spec, spec.candidates[0], 8, "i")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HELIOS_DEVICE"] == "cuda" and env["HELIOS_DTYPE"] == "auto"
    settings = ServerSettings.from_sources({}, {k: v for k, v in env.items() if v is not None})
    assert settings.memory_budget == str(20 << 30) and settings.max_seq_len == 4096 and settings.max_batch_size == 256
    cpu = HeliosDeploymentSpec.model_validate({"candidates": [{"name": "a", "model": "org/a"}]})
    cpu_env = {e["name"]: e.get("value") for e in manifests.worker_env(cpu, cpu.candidates[0], {})}
    assert cpu_env["HELIOS_DEVICE"] == "cpu" and cpu_env["HELIOS_MEMORY_BUDGET"] == "auto"


def test_the_layers_route_refuses_with_409_and_states_capacity(tiny_model):
    path = str(tiny_model("llama"))
    budget = budget_for(load_model(path, layers=2), 4, 1, max_batch_size=4)
    settings = ServerSettings(model=path, layers=2, max_seq_len=SEQ_LEN, max_batch_size=4, memory_budget=str(budget))
    with live_server(settings) as server, httpx.Client(base_url=server.base_url, timeout=60) as client:
        grown = client.post("/v1/helios/layers", json={"layers": 4})
        assert grown.status_code == 200, grown.text
        assert grown.json()["max_num_seqs"] == 1 and grown.json()["memory_budget_bytes"] == budget
        assert grown.json()["kv_cache_capacity_tokens"] == SEQ_LEN
        metrics = client.get("/metrics").text
        assert 'helios_max_num_seqs{model="' in metrics and "helios_weights_bytes" in metrics
        shrunk = client.post("/v1/helios/layers", json={"layers": 2})
        assert shrunk.json()["max_num_seqs"] == 4


def test_growing_with_more_streams_running_than_fit_answers_409(tiny_model):
    path = str(tiny_model("llama"))
    budget = budget_for(load_model(path, layers=2), 4, 1, max_batch_size=4)
    settings = ServerSettings(model=path, layers=2, max_seq_len=SEQ_LEN, max_batch_size=4, memory_budget=str(budget))
    body = {"prompt": [1, 40, 41], "max_tokens": 40, "ignore_eos": True, "stream": True, "temperature": 0}
    with live_server(settings) as server, httpx.Client(base_url=server.base_url, timeout=60) as client:
        server.recorder.step_delay = 0.02  # both streams are still running when the change arrives
        with (
            client.stream("POST", "/v1/completions", json=body) as first,
            client.stream("POST", "/v1/completions", json=body) as second,
        ):
            lines = first.iter_lines(), second.iter_lines()
            for stream in lines:
                next(line for line in stream if line.startswith("data:"))
            refused = client.post("/v1/helios/layers", json={"layers": 4})
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"]["code"] == "layer_change_refused"
            rest = [list(stream) for stream in lines]
        assert all(any("[DONE]" in line for line in stream) for stream in rest)  # nothing was lost
        assert client.get("/v1/helios/state").json()["layers_loaded"] == 2


def test_a_budgeted_worker_queues_beyond_its_capacity_and_429s_only_when_the_queue_is_full(tiny_model):
    path = str(tiny_model("llama"))
    budget = budget_for(load_model(path, layers=2), 2, 1, max_batch_size=8)  # one sequence, though 8 are allowed
    settings = ServerSettings(
        model=path, layers=2, max_seq_len=SEQ_LEN, max_batch_size=8, max_queue=1, memory_budget=str(budget)
    )
    body = {"prompt": [1, 40, 41], "max_tokens": 5, "stream": True}
    with live_server(settings) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        server.recorder.gate.clear()  # hold the engine after its first step
        with (
            client.stream("POST", "/v1/completions", json=body) as first,
            client.stream("POST", "/v1/completions", json=body) as queued,
        ):
            assert first.status_code == 200 and queued.status_code == 200
            rejected = client.post("/v1/completions", json={"prompt": [1, 40], "max_tokens": 2})
            assert rejected.status_code == 429
            server.recorder.gate.set()
            assert all(any("[DONE]" in line for line in stream.iter_lines()) for stream in (first, queued))
        assert "helios_max_num_seqs" in client.get("/metrics").text


def test_objective_batch_size_yields_a_worker_that_holds_the_predicted_batch(tiny_model):
    """select -> the operator's pod env -> the worker's own settings and loader: the same number of sequences."""
    from helios_operator.policy.select import select
    from helios_worker.server.state import load_engine

    path = str(tiny_model("llama"))
    report = evaluate_candidate(load_model(path), ["the quick brown", "def add(a, b):"], 4, 0.8, name="a")
    spec = HeliosDeploymentSpec.model_validate(
        {
            "candidates": [{"name": "a", "model": path}],
            "objective": "batchSize",
            "accuracy": {"minAgreement": 0.0},
            "monitoring": {"maxBreaches": 100, "targetBreachFraction": 1.0},  # random weights: breaches everywhere
            "contextTokens": SEQ_LEN,
            "memoryBudget": str(budget_for(load_model(path), 4, 3, max_batch_size=MAX_NUM_SEQS)),
        }
    )
    decision = select([report], spec, spec.memory_budget)
    assert decision.layers < 4 and decision.max_batch_size > 3  # fewer layers, more sequences
    deployment = manifests.build_deployment(OWNER, spec, spec.candidates[0], decision.layers, "img")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["HELIOS_LAYERS"] = manifests.build_serving_configmap(OWNER, decision.layers)["data"]["layers"]  # as kubelet
    engine = load_engine(ServerSettings.from_sources({}, env))
    assert engine.num_slots == decision.max_batch_size
