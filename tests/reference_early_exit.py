"""A slow, obvious early-exit decoder used as a test oracle for the batched engine.

Independent of the engine's code: it runs an HF model loaded by HF itself
(``AutoModelForCausalLM.from_pretrained``), one sequence and one token at a time, calling
HF's own decoder layer modules with a plain list cache. The K/V of a layer a token skipped
is whatever the real HF layer writes when run on the token's exit hidden state (captured
from a scratch cache), not the engine's projection code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM


class ListCache:
    """The HF cache protocol over per-layer lists of [1, kv_heads, 1.., head_dim] chunks."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]
        self.values: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]

    def append(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self.keys[layer_idx].append(key)
        self.values[layer_idx].append(value)

    def update(self, key, value, layer_idx, *args, **kwargs):
        self.append(layer_idx, key, value)
        return torch.cat(self.keys[layer_idx], dim=2), torch.cat(self.values[layer_idx], dim=2)


class ScratchCache:
    """Records the K/V a layer writes and lets it attend to just those."""

    def __init__(self) -> None:
        self.written: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key, value, layer_idx, *args, **kwargs):
        self.written = (key, value)
        return key, value


class HFModel:
    """An HF causal LM cut to its first ``num_layers`` layers, driven layer by layer."""

    def __init__(self, path, num_layers: int | None = None) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.kind = self.model.config.model_type
        stack = self.layers
        if num_layers is not None:
            del stack[num_layers:]
        self.num_layers = len(stack)

    @property
    def layers(self):
        if self.kind == "gpt2":
            return self.model.transformer.h
        if self.kind == "opt":
            return self.model.model.decoder.layers
        return self.model.model.layers

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.kind == "gpt2":
            return self.model.transformer.wte(ids) + self.model.transformer.wpe(positions)
        if self.kind == "opt":
            decoder = self.model.model.decoder
            hidden = decoder.embed_tokens(ids)
            if decoder.project_in is not None:
                hidden = decoder.project_in(hidden)
            return hidden + decoder.embed_positions.weight[positions + decoder.embed_positions.offset]
        return self.model.model.embed_tokens(ids)

    def layer(self, index: int, hidden: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """HF's own layer call; with no mask, sdpa is causal for a prompt and open for one token."""
        layer = self.layers[index]
        if self.kind == "gpt2":
            return layer(hidden, cache=cache)
        if self.kind == "opt":
            seq = hidden.shape[1]
            mask = None
            if seq > 1:
                mask = torch.full((seq, seq), torch.finfo(hidden.dtype).min).triu(1)[None, None]
            return layer(hidden, attention_mask=mask, position_ids=positions, cache=cache)
        rotary = self.model.model.rotary_emb(hidden, positions)
        return layer(hidden, position_embeddings=rotary, position_ids=positions, cache=cache, attention_mask=None)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.kind == "gpt2":
            return self.model.lm_head(self.model.transformer.ln_f(hidden))
        if self.kind == "opt":
            decoder = self.model.model.decoder
            if decoder.final_layer_norm is not None:
                hidden = decoder.final_layer_norm(hidden)
            if decoder.project_out is not None:
                hidden = decoder.project_out(hidden)
            return self.model.lm_head(hidden)
        return self.model.lm_head(self.model.model.norm(hidden))

    def written_kv(self, index: int, hidden: torch.Tensor, positions: torch.Tensor):
        """The K/V HF's layer ``index`` writes for input ``hidden`` at ``positions``."""
        scratch = ScratchCache()
        self.layer(index, hidden, positions, scratch)
        return scratch.written


Gate = Callable[[torch.Tensor, torch.Tensor], bool]  # (layer input, layer output) [hidden] -> worth a head


@torch.inference_mode()
def reference_generate(
    hf: HFModel,
    prompt: list[int],
    max_new_tokens: int,
    threshold: float,
    exit_layers: list[int],
    gate: Gate | None = None,
    eos_token_id: int | None = None,
    layer_gate: Callable[[int, torch.Tensor, torch.Tensor], bool] | None = None,
    translate: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    thresholds: dict[int, float] | None = None,
    distributions: list[torch.Tensor] | None = None,
    forced: list[int] | None = None,
) -> tuple[list[int], list[int]]:
    """Greedy early-exit generation; returns (tokens, exit layers). Stops at ``eos_token_id`` if given.

    ``layer_gate(layer, before, after)`` like ``gate`` but told the layer; ``translate(layer, h)``
    maps a state before the head reads it (calibrated exits); ``thresholds`` overrides the
    confidence threshold per layer. ``distributions``, if given, receives each token's
    log-softmax [vocab] at its exit layer; ``forced`` tokens replace the argmax (to follow a
    sampled continuation: exits depend on confidence only, not on the token taken).
    """
    num_layers = hf.num_layers
    cache = ListCache(num_layers)
    tokens: list[int] = []
    exits: list[int] = []
    inputs = list(prompt)
    start = 0
    for _ in range(max_new_tokens):
        positions = torch.arange(start, len(inputs))[None]
        hidden = hf.embed(torch.tensor([inputs[start:]]), positions)
        decision = None
        for index in range(num_layers):
            before = hidden
            hidden = hf.layer(index, hidden, positions, cache)
            layer_no = index + 1
            if decision is not None or layer_no not in exit_layers:
                continue
            is_last = layer_no == num_layers
            if not is_last and gate is not None and not gate(before[0, -1], hidden[0, -1]):
                continue
            if not is_last and layer_gate is not None and not layer_gate(layer_no, before[0, -1], hidden[0, -1]):
                continue
            state = hidden[:, -1] if translate is None else translate(layer_no, hidden[:, -1])
            logits = hf.head(state)[0]
            probs = logits.softmax(-1)
            if probs.max() >= (thresholds or {}).get(layer_no, threshold) or is_last:
                token = int(probs.argmax()) if forced is None else forced[len(tokens)]
                decision = (token, layer_no)
                if distributions is not None:
                    distributions.append(logits.float().log_softmax(-1))
                if start > 0:  # decode: each skipped layer caches what it writes for this state
                    for skipped in range(layer_no, num_layers):
                        cache.append(skipped, *hf.written_kv(skipped, hidden, positions))
                    break
        tokens.append(decision[0])
        exits.append(decision[1])
        if decision[0] == eos_token_id:
            break
        start = len(inputs)
        inputs.append(decision[0])
    return tokens, exits


def saturation_gate(threshold: float) -> Gate:
    """CALM saturation, written out: cos(input, output) >= threshold, in float64."""

    def passes(before: torch.Tensor, after: torch.Tensor) -> bool:
        a, b = before.double(), after.double()
        return bool((a @ b) / (a.norm() * b.norm()) >= threshold)

    return passes
