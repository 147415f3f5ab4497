"""The committed helios-ee-tiny model loads with plain transformers and really exits early."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast

import helios_worker
from helios_worker.training.early_exit import first_confident_layers, per_layer_logits, read_prompts

ASSETS = Path(helios_worker.__file__).parent / "assets"
MODEL_DIR = ASSETS / "helios-ee-tiny"
NUM_LAYERS = 8
# Every fourth prompt keeps the greedy runs fast while still covering all prompt kinds.
PROMPT_STRIDE = 4


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    # One thread: two spin-wait on each other when the CPU is shared, which is slower.
    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(MODEL_DIR)


def held_out_agreement_and_accuracy(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast
) -> tuple[torch.Tensor, float]:
    """Per-layer agreement with the last layer's argmax, and the last layer's accuracy."""
    agree, correct, num_tokens = torch.zeros(NUM_LAYERS), 0, 0
    for prompt in read_prompts(ASSETS / "prompts" / "in_domain.txt"):
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids[0]
        predictions = per_layer_logits(model, input_ids[:-1]).argmax(-1)  # [layers, seq]
        agree += (predictions == predictions[-1]).sum(-1)
        correct += (predictions[-1] == input_ids[1:]).sum().item()
        num_tokens += len(input_ids) - 1
    return agree / num_tokens, correct / num_tokens


def test_loads_as_small_float_llama(model: LlamaForCausalLM) -> None:
    assert model.config.num_hidden_layers == NUM_LAYERS
    assert model.config.tie_word_embeddings
    weights = MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size <= 16_000_000
    # The config must name the dtype actually stored, or loaders with dtype="auto" mislead.
    stored_dtype = json.loads((MODEL_DIR / "config.json").read_text())["dtype"]
    with safe_open(weights, framework="pt") as stored:
        name = next(iter(stored.keys()))
        assert str(stored.get_tensor(name).dtype) == f"torch.{stored_dtype}"


def test_tokenizer_round_trips_and_has_special_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    text = "The return statement leaves the current function call."
    input_ids = tokenizer(text).input_ids
    assert input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(input_ids, skip_special_tokens=True) == text
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None


def test_agreement_rises_with_depth_on_held_out_text(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast
) -> None:
    agreement, last_layer_accuracy = held_out_agreement_and_accuracy(model, tokenizer)
    # Random weights also "agree" (every layer echoes the input embedding), so require that
    # the last layer actually predicts held-out text: random weights score about 1/vocab,
    # the committed model 0.086 on these prompts.
    assert last_layer_accuracy > 0.06
    assert agreement[0] < agreement[NUM_LAYERS // 2] < agreement[-1] == 1.0
    assert all(later >= earlier - 0.05 for earlier, later in pairwise(agreement))
    # Measured 0.91: the layer before the last mostly picks the same token.
    assert agreement[-2] >= 0.85


def test_in_domain_prompts_exit_earlier_than_out_of_domain(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast
) -> None:
    def mean_first_confident_layer(file_name: str) -> float:
        prompts = read_prompts(ASSETS / "prompts" / file_name)[::PROMPT_STRIDE]
        layers = [layer for prompt in prompts for layer in first_confident_layers(model, tokenizer, prompt)]
        return sum(layers) / len(layers)

    assert mean_first_confident_layer("in_domain.txt") < mean_first_confident_layer("out_of_domain.txt")
