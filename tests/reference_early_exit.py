"""A slow, obvious early-exit decoder used as a test oracle for the batched engine.

One sequence, one token at a time, K/V kept in plain per-layer lists; exits and the
skipped-layer KV fill follow the engine's documented scheme, written independently.
"""

from __future__ import annotations

import torch

from helios_worker.loading import LoadedModel


class ListCache:
    def __init__(self, num_layers: int) -> None:
        self.keys: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]
        self.values: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]

    def append(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self.keys[layer_idx].append(key)
        self.values[layer_idx].append(value)

    def update(self, key, value, layer_idx, *args, **kwargs):
        self.append(layer_idx, key, value)
        return torch.cat(self.keys[layer_idx], dim=2), torch.cat(self.values[layer_idx], dim=2)


@torch.inference_mode()
def reference_generate(
    loaded: LoadedModel, prompt: list[int], max_new_tokens: int, threshold: float, exit_layers: list[int]
) -> tuple[list[int], list[int]]:
    """Greedy early-exit generation; returns (tokens, exit layers)."""
    family, model = loaded.family, loaded.model
    layers = loaded.layers
    num_layers = len(layers)
    cache = ListCache(num_layers)
    tokens: list[int] = []
    exits: list[int] = []
    inputs = list(prompt)
    start = 0
    for _ in range(max_new_tokens):
        n = len(inputs) - start
        ids = torch.tensor([inputs[start:]])
        positions = torch.arange(start, len(inputs))[None]
        hidden = family.embed(model, ids, positions)
        pos_in = family.position_inputs(model, hidden, positions)
        mask = torch.zeros(n, len(inputs))
        mask[:, start:] = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)
        mask = mask[None, None]
        decision = None
        for index, layer in enumerate(layers):
            hidden = family.run_layer(layer, hidden, mask, positions, pos_in, cache)
            layer_no = index + 1
            if decision is None and layer_no in exit_layers:
                probs = family.exit_head(model, hidden[:, -1]).softmax(-1)[0]
                if probs.max() >= threshold or layer_no == num_layers:
                    decision = (int(probs.argmax()), layer_no)
                    if start > 0:  # decode: skipped layers get K/V projected from this state
                        for skipped in range(layer_no, num_layers):
                            cache.append(skipped, *family.project_kv(layers[skipped], hidden, pos_in))
                        break
        tokens.append(decision[0])
        exits.append(decision[1])
        start = len(inputs)
        inputs.append(decision[0])
    return tokens, exits
