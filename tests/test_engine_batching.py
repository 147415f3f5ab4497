"""Continuous batching, sampling, aborts and in-place layer changes in the engine."""

from __future__ import annotations

import json

import pytest

from helios_operator.cli import main
from helios_worker.engine import Engine, EngineConfig, RequestError
from helios_worker.loading import load_model, resize_layers
from helios_worker.sampling import SamplingParams

GREEDY = SamplingParams(max_new_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return load_model(str(tiny_model("llama")), layers=3)


def _prompts(loaded):
    return [loaded.tokenizer(p).input_ids for p in ["the quick brown", "def add(a, b):", "early exit lets easy"]]


def test_requests_join_and_leave_between_steps(loaded):
    prompts = _prompts(loaded)
    config = EngineConfig(exit_threshold=0.4, max_batch_size=2)
    alone = [Engine(loaded, config).generate([p], GREEDY)[0].token_ids for p in prompts]

    engine = Engine(loaded, config)
    first = engine.add_request(prompts[0], GREEDY)
    done, batch_sizes = {}, []
    for step in range(100):
        if step == 3:  # joins while the first is mid-generation
            engine.add_request(prompts[1], GREEDY, request_id="second")
            engine.add_request(prompts[2], SamplingParams(max_new_tokens=4, ignore_eos=True), request_id="third")
        outputs, stats = engine.step()
        batch_sizes.append(stats.num_decodes + stats.num_prefills)
        done.update({o.request_id: o for o in outputs if o.finished})
        if not engine.has_unfinished() and step > 3:
            break
    assert done[first].token_ids == alone[0]
    assert done["second"].token_ids == alone[1]
    assert done["third"].token_ids == alone[2][:4] and done["third"].finish_reason == "length"
    assert max(batch_sizes) == 2  # never more rows than slots; the third waited for a free slot
    assert engine.free_slots == [0, 1]


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(loaded):
    prompt = _prompts(loaded)[0]
    sampled = SamplingParams(max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7, ignore_eos=True)
    engine = Engine(loaded, EngineConfig(early_exit=False))
    a = engine.generate([prompt], sampled)[0].token_ids
    b = engine.generate([prompt], sampled)[0].token_ids
    greedy = engine.generate([prompt], SamplingParams(max_new_tokens=12, ignore_eos=True))[0].token_ids
    assert a == b
    assert a != greedy


def test_abort_frees_the_slot(loaded):
    engine = Engine(loaded, EngineConfig(max_batch_size=1))
    request = engine.add_request(_prompts(loaded)[0], GREEDY)
    engine.step()
    engine.abort(request)
    assert not engine.has_unfinished() and engine.free_slots == [0]


def test_too_long_request_is_rejected_with_a_clear_message(loaded):
    engine = Engine(loaded, EngineConfig(max_seq_len=16))
    with pytest.raises(RequestError, match="exceeds the context length 16"):
        engine.add_request(list(range(10)), SamplingParams(max_new_tokens=10))
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=-1)  # 0 is a prefill only (prompt logprobs)
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=6)


def test_growing_mid_request_equals_an_engine_that_had_the_layers_all_along(tiny_model):
    """Layers added while serving get KV for past tokens from their exit states (the skip scheme)."""
    path = str(tiny_model("llama"))
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    config = EngineConfig(exit_threshold=0.4, max_batch_size=2)

    grown = Engine(load_model(path, layers=2), config)
    for p in prompts:
        grown.add_request(p, GREEDY)
    reference = Engine(load_model(path, layers=4), config)
    reference.set_active_layers(2)
    for p in prompts:
        reference.add_request(p, GREEDY)

    outputs = {}
    for step in range(20):
        if step == 4:
            resize_layers(grown.loaded, 4)
            grown.set_active_layers(4)
            reference.set_active_layers(4)
        for engine, tag in ((grown, "grown"), (reference, "reference")):
            for output in engine.step()[0]:
                outputs[(tag, output.request_id)] = output
    for request_id in ("req-0", "req-1"):
        a, b = outputs[("grown", request_id)], outputs[("reference", request_id)]
        assert a.token_ids == b.token_ids and a.exit_layers == b.exit_layers
        assert max(a.exit_layers[:4]) <= 2 < max(a.exit_layers)  # the change really took effect


def test_generate_cli_json_contract(tiny_model, capsys):
    path = str(tiny_model("gpt2"))
    rc = main(["generate", "--model", path, "--layers", "3", "--max-new-tokens", "5", "--json",
               "--prompt", "the quick", "--prompt", "def add"])  # fmt: skip
    assert rc == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2
    for record in records:
        assert {"text", "token_ids", "exit_layers", "confidences", "breaches"} <= record.keys()
        assert record["num_layers_loaded"] == 3 and record["num_layers_total"] == 4
        assert len(record["token_ids"]) == len(record["exit_layers"]) == len(record["confidences"])
        assert all(1 <= layer <= 3 for layer in record["exit_layers"])


def test_generate_cli_bad_input_is_one_line(tiny_model, capsys):
    assert main(["generate", "--model", str(tiny_model("gpt2")), "--layers", "9", "--prompt", "x"]) == 2
    assert "layers must be between 1 and 4" in capsys.readouterr().err
    assert main(["generate", "--model", "missing-model", "--prompt", "x"]) == 2
    assert "not found" in capsys.readouterr().err
