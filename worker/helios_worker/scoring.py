"""Full-depth logits of a token sequence through the loaded layers (teacher forcing).

The shadow check and the benchmarks score served tokens with this, and calibration reads
the states of every layer through it: one causal pass over the whole sequence with a
one-slot scratch cache, the same layers the engine runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from helios_worker.batch import prepare_prefill
from helios_worker.kv_cache import SlotKVCache
from helios_worker.loading import LoadedModel


@torch.inference_mode()
def forward(
    loaded: LoadedModel,
    token_ids: list[int],
    cache: SlotKVCache | None = None,
    on_layer: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """One causal pass of ``token_ids`` through the loaded layers; the last layer's states [seq, hidden].

    ``cache`` (one slot, at least ``len(token_ids)`` positions) is reused when given;
    ``on_layer(layer, states)`` sees the states [seq, hidden] after each 1-based layer.
    """
    device, family = loaded.device, loaded.family
    if cache is None:
        cache = SlotKVCache.for_model(loaded, num_slots=1, max_seq_len=len(token_ids))
    ids = torch.tensor([token_ids], device=device)  # [1, seq]
    positions = torch.arange(len(token_ids), device=device)[None]  # [1, seq]
    hidden = family.embed(loaded.model, ids, positions)
    batch = prepare_prefill([0], positions, hidden.dtype, lambda p: family.rotary(loaded.model, hidden, p))
    for index, layer in enumerate(loaded.layers):
        hidden = family.run_layer(layer, hidden, batch, cache)
        if on_layer is not None:
            on_layer(index + 1, hidden[0])
    return hidden[0]


def sequence_logits(loaded: LoadedModel, token_ids: list[int]) -> torch.Tensor:
    """Logits [len(token_ids), vocab] after all loaded layers; row i predicts token i + 1."""
    with torch.inference_mode():
        return loaded.family.exit_head(loaded.model, forward(loaded, token_ids))
