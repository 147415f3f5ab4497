"""Our own decoder-layer math for the Llama family (Llama, Mistral, Qwen2, Qwen3, SmolLM2/3).

Built once at load time from an HF decoder layer's weights, as nano-vllm's model files do:
Q/K/V fused into one projection and gate/up into another, RMSNorm, rotary and SDPA written
once. The engine calls ``forward`` with a prepared batch (``helios_worker.batch``), so no
private HF call signature is involved; HF modules stay the exactness oracle in the tests.

Attention never copies a context: prefill attends among the new tokens it writes, and
decode attends through a view of a contiguous span of cache slots (``DecodeBatch``), with
the rows still running scattered into that span and every other row masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from helios_worker.batch import DecodeBatch, PrefillBatch
from helios_worker.kv_cache import SlotKVCache


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm: normalise in float32, scale in the input dtype."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [rows, heads, seq, head_dim] by cos/sin [rows, seq, head_dim] (half-split layout)."""
    cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _param(tensor: torch.Tensor | None) -> nn.Parameter | None:
    return None if tensor is None else nn.Parameter(tensor.detach(), requires_grad=False)


def _cat(*tensors: torch.Tensor | None) -> torch.Tensor | None:
    return None if any(t is None for t in tensors) else torch.cat(tensors, dim=0)


class LlamaBlock(nn.Module):
    """One pre-norm decoder layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, hf_layer: nn.Module, config, layer_idx: int) -> None:
        super().__init__()
        attn, mlp = hf_layer.self_attn, hf_layer.mlp
        self.layer_idx = layer_idx
        self.head_dim = attn.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.scaling = self.head_dim**-0.5
        self.eps = hf_layer.input_layernorm.variance_epsilon
        no_rope = getattr(config, "no_rope_layers", None)  # SmolLM3: 0 marks a NoPE layer
        self.use_rope = bool(no_rope[layer_idx]) if no_rope is not None else True
        if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
            raise ValueError("sliding-window attention is not supported by the compact Llama layer")
        self.act = ACT2FN[config.hidden_act]
        # fused [q; k; v] rows: [(heads + 2 kv_heads) * head_dim, hidden]
        self.qkv_weight = _param(torch.cat((attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight)))
        self.qkv_bias = _param(_cat(attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias))
        self.o_weight = _param(attn.o_proj.weight)
        self.o_bias = _param(attn.o_proj.bias)
        self.gate_up_weight = _param(torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight)))
        self.gate_up_bias = _param(_cat(mlp.gate_proj.bias, mlp.up_proj.bias))
        self.down_weight = _param(mlp.down_proj.weight)
        self.down_bias = _param(mlp.down_proj.bias)
        self.input_norm = _param(hf_layer.input_layernorm.weight)
        self.post_norm = _param(hf_layer.post_attention_layernorm.weight)
        # Qwen3 normalises Q and K per head before rotary
        self.q_norm = _param(attn.q_norm.weight) if hasattr(attn, "q_norm") else None
        self.k_norm = _param(attn.k_norm.weight) if hasattr(attn, "k_norm") else None
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim

    # --- pieces shared by forward and the skipped-layer K/V fill ------------------------
    def _qkv(self, normed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        return F.linear(normed, weight, bias)

    def _heads(self, x: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
        """[rows, seq, heads*head_dim] -> [rows, heads, seq, head_dim], per-head norm first (Qwen3)."""
        x = x.view(*x.shape[:-1], -1, self.head_dim)
        if norm is not None:
            x = rms_norm(x, norm, self.eps)
        return x.transpose(1, 2)

    def project_kv(self, hidden: torch.Tensor, rotary) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V this layer would cache for tokens whose input to it is ``hidden`` [rows, seq, hidden]."""
        normed = rms_norm(hidden, self.input_norm, self.eps)
        start = self.q_size
        weight = self.qkv_weight[start:]
        bias = None if self.qkv_bias is None else self.qkv_bias[start:]
        key, value = self._qkv(normed, weight, bias).split(self.kv_size, dim=-1)
        key = self._heads(key, self.k_norm)
        if self.use_rope:
            key = apply_rotary(key, *rotary)
        return key, self._heads(value, None)

    # --- the layer ----------------------------------------------------------------------
    def forward(self, hidden: torch.Tensor, batch: PrefillBatch | DecodeBatch, cache: SlotKVCache) -> torch.Tensor:
        """``hidden`` [rows, seq, hidden] for the batch's rows -> the same shape after this layer."""
        rows, seq, _ = hidden.shape
        normed = rms_norm(hidden, self.input_norm, self.eps)
        query, key, value = self._qkv(normed, self.qkv_weight, self.qkv_bias).split(
            (self.q_size, self.kv_size, self.kv_size), dim=-1
        )
        query, key, value = self._heads(query, self.q_norm), self._heads(key, self.k_norm), self._heads(value, None)
        if self.use_rope:
            query, key = apply_rotary(query, *batch.rotary), apply_rotary(key, *batch.rotary)
        cache.write(self.layer_idx, batch.slots, batch.positions, key, value)
        if isinstance(batch, PrefillBatch):
            # right-padded fresh prompts: causal attention among the new tokens is exact
            out = F.scaled_dot_product_attention(
                query, key, value, is_causal=True, scale=self.scaling, enable_gqa=self.num_kv_heads != self.num_heads
            )  # [rows, heads, seq, head_dim]
            out = out.transpose(1, 2).reshape(rows, seq, self.q_size)
        else:
            out = self._decode_attention(query, batch, cache).view(rows, 1, self.q_size)
        hidden = hidden + F.linear(out, self.o_weight, self.o_bias)
        gate, up = F.linear(rms_norm(hidden, self.post_norm, self.eps), self.gate_up_weight, self.gate_up_bias).chunk(
            2, dim=-1
        )
        return hidden + F.linear(self.act(gate) * up, self.down_weight, self.down_bias)

    def _decode_attention(self, query: torch.Tensor, batch: DecodeBatch, cache: SlotKVCache) -> torch.Tensor:
        """One query per row against its cached context, read through a view of the slot span.

        GQA without copies: the heads sharing a K/V head become that head's query "sequence"
        ([span, kv_heads, groups, head_dim]); with one query per row no causal mask is needed
        inside it, and the span mask [span, 1, 1, context] hides other positions.
        """
        rows = query.shape[0]
        groups = self.num_heads // self.num_kv_heads
        query = query.reshape(rows, self.num_kv_heads, groups, self.head_dim)
        if batch.attention_runs is not None:
            return torch.cat([self._attend_run(query, batch, cache, run) for run in batch.attention_runs])
        if batch.fills_span:
            span_query = query
        else:  # rows that left (or empty slots) sit in the span too; their output is dropped
            span_query = query.new_zeros(batch.span_size, self.num_kv_heads, groups, self.head_dim)
            span_query[batch.span_rows] = query
        keys, values = cache.span(self.layer_idx, batch.span_start, batch.span_size, batch.context_len)
        out = F.scaled_dot_product_attention(span_query, keys, values, attn_mask=batch.span_mask, scale=self.scaling)
        return out if batch.fills_span else out[batch.span_rows]  # [rows, kv_heads, groups, head_dim]

    def _attend_run(self, query: torch.Tensor, batch: DecodeBatch, cache: SlotKVCache, run) -> torch.Tensor:
        """Rows of one run of consecutive slots against views of exactly their slots."""
        size = run.row_end - run.row_start
        keys, values = cache.span(self.layer_idx, run.slot_start, size, batch.context_len)
        offset = run.slot_start - batch.span_start
        mask = batch.span_mask[offset : offset + size]
        return F.scaled_dot_product_attention(
            query[run.row_start : run.row_end], keys, values, attn_mask=mask, scale=self.scaling
        )
