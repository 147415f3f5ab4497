"""The engine is exact: full depth equals HF generate, truncation equals a cut HF model,
early exits equal an independent one-token-at-a-time oracle, batching changes nothing."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from helios_worker.engine import Engine, EngineConfig
from helios_worker.loading import load_model
from helios_worker.sampling import SamplingParams
from tests.conftest import ARCHITECTURES
from tests.reference_early_exit import HFModel, reference_generate

PROMPTS = ["the quick brown fox", "def add(a, b):", "kubernetes operators reconcile custom resources and"]
NEW_TOKENS = 12
GREEDY = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)


def _prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer(p).input_ids for p in PROMPTS]


def _hf_greedy(model, prompt: list[int]) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def _assert_same_greedy(ours: list[int], hf: list[int], eos: int) -> None:
    """HF stops at EOS; our outputs ran with ignore_eos so they compare up to that point."""
    assert ours[: len(hf)] == hf
    assert len(hf) == len(ours) or hf[-1] == eos


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_full_depth_without_exits_matches_hf_generate(tiny_model, arch):
    path = tiny_model(arch)
    loaded = load_model(str(path))
    prompts = _prompt_ids(loaded.tokenizer)
    engine = Engine(loaded, EngineConfig(early_exit=False, max_batch_size=len(prompts)))
    outputs = engine.generate(prompts, GREEDY)

    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    for prompt, output in zip(prompts, outputs, strict=True):
        _assert_same_greedy(output.token_ids, _hf_greedy(reference, prompt), eos=2)
        assert output.exit_layers == [4] * NEW_TOKENS
        assert output.num_breaches == 0  # all layers loaded: the last layer is the model's own answer


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_truncated_stack_matches_hf_model_cut_by_hand(tiny_model, arch):
    path = tiny_model(arch)
    loaded = load_model(str(path), layers=2)
    assert loaded.num_layers_loaded == 2 and loaded.num_layers_total == 4
    prompts = _prompt_ids(loaded.tokenizer)
    outputs = Engine(loaded, EngineConfig(early_exit=False, max_batch_size=3)).generate(prompts, GREEDY)

    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    stack = loaded.family.layers(reference)
    del stack[2:]
    reference.config.num_hidden_layers = 2
    for prompt, output in zip(prompts, outputs, strict=True):
        _assert_same_greedy(output.token_ids, _hf_greedy(reference, prompt), eos=2)
        assert set(output.exit_layers) == {2}


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("layers", [3, 4])
def test_early_exit_tokens_match_the_one_token_oracle(tiny_model, arch, layers):
    loaded = load_model(str(tiny_model(arch)), layers=layers)
    hf = HFModel(tiny_model(arch), layers)
    prompts = _prompt_ids(loaded.tokenizer)
    distinct_exit_layers = set()
    for threshold in (0.05, 0.2, 0.4, 0.6, 0.9, 0.97):  # random weights: where exits mix varies
        engine = Engine(loaded, EngineConfig(exit_threshold=threshold, max_batch_size=len(prompts)))
        outputs = engine.generate(prompts, GREEDY)
        exits_seen = set()
        for prompt, output in zip(prompts, outputs, strict=True):
            tokens, exits = reference_generate(hf, prompt, NEW_TOKENS, threshold, engine.exit_layers)
            assert output.token_ids == tokens
            assert output.exit_layers == exits
            exits_seen.update(exits)
            for stats in output.token_stats:
                confident = stats.confidence >= threshold
                assert confident or stats.exit_layer == layers
                assert stats.is_breach == (not confident and layers < 4)
        distinct_exit_layers = max(distinct_exit_layers, exits_seen, key=len)
    # the comparison means something only if tokens really left at different layers
    assert len(distinct_exit_layers) > 1


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_batched_equals_one_at_a_time(tiny_model, arch):
    loaded = load_model(str(tiny_model(arch)), layers=3)
    prompts = _prompt_ids(loaded.tokenizer)
    config = EngineConfig(exit_threshold=0.3, max_batch_size=4)
    batched = Engine(loaded, config).generate(prompts, GREEDY)
    for prompt, together in zip(prompts, batched, strict=True):
        alone = Engine(loaded, config).generate([prompt], GREEDY)[0]
        assert alone.token_ids == together.token_ids
        assert alone.exit_layers == together.exit_layers
