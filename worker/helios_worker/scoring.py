"""Full-depth logits of a token sequence through the loaded layers (teacher forcing).

The shadow check and the benchmarks score served tokens with this: one causal pass over
the whole sequence with a one-slot scratch cache, the same layers the engine runs.
"""

from __future__ import annotations

import torch

from helios_worker.batch import prepare_prefill
from helios_worker.kv_cache import SlotKVCache
from helios_worker.loading import LoadedModel


@torch.inference_mode()
def sequence_logits(loaded: LoadedModel, token_ids: list[int]) -> torch.Tensor:
    """Logits [len(token_ids), vocab] after all loaded layers; row i predicts token i + 1."""
    device, family = loaded.device, loaded.family
    cache = SlotKVCache.for_model(loaded, num_slots=1, max_seq_len=len(token_ids))
    ids = torch.tensor([token_ids], device=device)  # [1, seq]
    positions = torch.arange(len(token_ids), device=device)[None]  # [1, seq]
    hidden = family.embed(loaded.model, ids, positions)
    batch = prepare_prefill([0], positions, hidden.dtype, lambda p: family.rotary(loaded.model, hidden, p))
    for layer in loaded.layers:
        hidden = family.run_layer(layer, hidden, batch, cache)
    return family.exit_head(loaded.model, hidden[0])
