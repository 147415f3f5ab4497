"""Where each supported model family keeps its pieces, and the few calls that differ.

The engine treats a decoder-only model as: embed -> decoder layers -> exit head (final norm +
LM head). The Llama family runs our own compact layer (``helios_worker.llama_block``) built
from the HF weights at load time; GPT-2 and OPT keep HF's decoder layer modules. A family
says where its modules live, how positions enter, and how to compute one layer's K/V from a
hidden state (used to fill the KV cache of layers a token skipped).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from helios_worker.llama_block import LlamaBlock


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[batch, seq, heads*head_dim] -> [batch, heads, seq, head_dim]."""
    return x.view(*x.shape[:-1], -1, head_dim).transpose(1, 2)


@dataclass(frozen=True)
class Family:
    """Names and calls for one family of HF decoder-only models."""

    name: str
    model_types: tuple[str, ...]
    base_prefix: str  # module path of the base model inside *ForCausalLM
    layers_path: str  # relative to the *ForCausalLM module
    shared_module_paths: tuple[str, ...]  # everything outside the decoder layers

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers_path)

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers_path}.{index}."

    # --- the calls that differ ------------------------------------------------------------
    def compile_layer(self, layer: nn.Module, config: Any, index: int) -> nn.Module:
        """The module the engine runs for a freshly loaded HF decoder layer (default: the layer itself)."""
        return layer

    def rotary(self, model: nn.Module, hidden: torch.Tensor, positions: torch.Tensor) -> Any:
        """Rotary (cos, sin) [rows, seq, head_dim] for ``positions``, or None for learned positions."""
        return None

    def embed(self, model: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, batch, cache) -> torch.Tensor:
        """``hidden`` [rows, seq, hidden] through ``layer`` for ``batch``'s rows, writing their K/V."""
        raise NotImplementedError

    def project_kv(self, layer: nn.Module, hidden: torch.Tensor, rotary: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V that ``layer`` would cache for a token whose input to this layer is ``hidden``."""
        raise NotImplementedError

    def exit_head(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@functools.cache
def _cache_kwarg(layer_type: type) -> str:
    """HF renamed the decoder layers' cache argument (``past_key_values`` -> ``cache`` in 5.x)."""
    parameters = inspect.signature(layer_type.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class HFLayerFamily(Family):
    """Families that run HF's own decoder layer modules through the ``SlotKVCache.update`` protocol."""

    def run_layer(self, layer, hidden, batch, cache):
        cache.bind(batch.slots, batch.positions, batch.context_len)
        kwargs = {_cache_kwarg(type(layer)): cache, "attention_mask": batch.mask}
        return self._call(layer, hidden, batch, kwargs)

    def _call(self, layer, hidden, batch, kwargs) -> torch.Tensor:
        return layer(hidden, **kwargs)


class LlamaFamily(Family):
    """Llama, Mistral, Qwen2/Qwen3, SmolLM2/3: pre-norm, rotary positions, GQA; our own layer math."""

    def compile_layer(self, layer, config, index):
        return LlamaBlock(layer, config, index)

    def rotary(self, model, hidden, positions):
        return model.model.rotary_emb(hidden, positions)

    def embed(self, model, input_ids, positions):
        return model.model.embed_tokens(input_ids)

    def run_layer(self, layer, hidden, batch, cache):
        return layer(hidden, batch, cache)

    def project_kv(self, layer, hidden, rotary):
        return layer.project_kv(hidden, rotary)

    def exit_head(self, model, hidden):
        return model.lm_head(model.model.norm(hidden))


class OPTFamily(HFLayerFamily):
    """OPT (the paper's models): learned positions with an offset, optional in/out projections."""

    def embed(self, model, input_ids, positions):
        decoder = model.model.decoder
        hidden = decoder.embed_tokens(input_ids)
        if decoder.project_in is not None:
            hidden = decoder.project_in(hidden)
        # OPTLearnedPositionalEmbedding stores positions shifted by its offset (2).
        pos_embeds = nn.Embedding.forward(decoder.embed_positions, positions + decoder.embed_positions.offset)
        return hidden + pos_embeds

    def _call(self, layer, hidden, batch, kwargs):
        return layer(hidden, position_ids=batch.positions, **kwargs)

    def project_kv(self, layer, hidden, rotary):
        attn = layer.self_attn
        normed = layer.self_attn_layer_norm(hidden) if layer.do_layer_norm_before else hidden
        return split_heads(attn.k_proj(normed), attn.head_dim), split_heads(attn.v_proj(normed), attn.head_dim)

    def exit_head(self, model, hidden):
        decoder = model.model.decoder
        if decoder.final_layer_norm is not None:
            hidden = decoder.final_layer_norm(hidden)
        if decoder.project_out is not None:
            hidden = decoder.project_out(hidden)
        return model.lm_head(hidden)


class GPT2Family(HFLayerFamily):
    """GPT-2: learned absolute positions, fused QKV projection (Conv1D)."""

    def embed(self, model, input_ids, positions):
        return model.transformer.wte(input_ids) + model.transformer.wpe(positions)

    def project_kv(self, layer, hidden, rotary):
        attn = layer.attn
        _, key, value = attn.c_attn(layer.ln_1(hidden)).split(attn.split_size, dim=2)
        return split_heads(key, attn.head_dim), split_heads(value, attn.head_dim)

    def exit_head(self, model, hidden):
        return model.lm_head(model.transformer.ln_f(hidden))


FAMILIES: tuple[Family, ...] = (
    LlamaFamily(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "smollm3"),
        base_prefix="model",
        layers_path="model.layers",
        shared_module_paths=("model.embed_tokens", "model.norm", "model.rotary_emb", "lm_head"),
    ),
    OPTFamily(
        name="opt",
        model_types=("opt",),
        base_prefix="model.decoder",
        layers_path="model.decoder.layers",
        shared_module_paths=(
            "model.decoder.embed_tokens",
            "model.decoder.embed_positions",
            "model.decoder.project_in",
            "model.decoder.project_out",
            "model.decoder.final_layer_norm",
            "lm_head",
        ),
    ),
    GPT2Family(
        name="gpt2",
        model_types=("gpt2",),
        base_prefix="transformer",
        layers_path="transformer.h",
        shared_module_paths=("transformer.wte", "transformer.wpe", "transformer.ln_f", "lm_head"),
    ),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)


def family_for(model_type: str) -> Family | None:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return None
