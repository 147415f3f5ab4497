"""Tiny random-weight models of every supported family, saved as real HF directories."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    SmolLM3Config,
)

VOCAB = 320
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "def add(a, b): return a + b",
    "kubernetes operators reconcile custom resources",
    "early exit lets easy tokens leave the network sooner",
] * 20


def _llama_like(cls, **extra):
    return cls(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        **extra,
    )


CONFIGS = {
    "llama": lambda: _llama_like(LlamaConfig),
    "mistral": lambda: _llama_like(MistralConfig, sliding_window=None),
    "qwen2": lambda: _llama_like(Qwen2Config),
    "qwen3": lambda: _llama_like(Qwen3Config, head_dim=16),
    # every second layer without rotary (NoPE), as SmolLM3 interleaves them
    "smollm3": lambda: _llama_like(SmolLM3Config, no_rope_layers=[1, 0, 1, 0], use_sliding_window=False),
    "opt": lambda: OPTConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=256,
        word_embed_proj_dim=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    ),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=4,
        n_head=4,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    ),
}


def make_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def make_model(directory: Path, arch: str, seed: int = 0, max_shard_size: str | None = None, **overrides) -> Path:
    """Save a random ``arch`` model (4 layers unless overridden) and a tokenizer to ``directory``."""
    config = CONFIGS[arch]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Random init gives near-uniform softmax everywhere; sharpen the head so some tokens exit
    # early. (Heads are untied here: a tied head would scale the input embeddings too, and a
    # random tied model then just predicts its input token. Tied loading is tested on SmolLM2.)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    make_tokenizer().save_pretrained(directory)
    return directory
