"""The one memory model: what a worker holding L of N layers allocates, and how many sequences fit.

The policy predicts with it (``helios_operator.policy.memory``) and the worker sizes its KV
cache with it (``Engine``), so a predicted batch is the batch a worker really holds. All
counts are exact bytes of what the engine allocates in the loaded dtype:

    weights(L)      = (shared params + L x params per layer) x itemsize
    per sequence(L) = max_seq_len x (2 x L x kv_heads x head_dim    K and V of every loaded layer
                                     + hidden)                      the exit-state buffer
                      x itemsize
    reserve         = activations of the largest prefill step and the logits of a full batch
    sequences       = floor((budget - weights(L) - reserve) / per sequence(L)), capped by max_batch_size

Loading L < N layers frees weights and KV of N - L layers; the freed bytes become sequences.
Pure and torch-free: the operator imports it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEFAULT_MAX_PREFILL_TOKENS = 8192  # padded prompt tokens one engine step may prefill together
MAX_NUM_SEQS = 256  # the cap on sequences when a budget sizes the cache (vLLM's max_num_seqs default)


class MemoryModelError(ValueError):
    """A budget that cannot hold the model as asked; the message gives the bytes."""


class LayerChangeRefused(ValueError):
    """A layer change the memory budget cannot hold without dropping requests; nothing was changed."""


class ModelShape(BaseModel):
    """The sizes of a model the memory model needs (element counts, independent of dtype)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_layers_total: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    intermediate_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    params_per_layer: int = Field(ge=0, description="Parameters of one decoder layer.")
    params_shared: int = Field(ge=0, description="Parameters outside the decoder layers (tied embeddings once).")


class MemoryPlan(BaseModel):
    """What a worker with ``layers`` layers holds within ``budget_bytes`` (None: no budget)."""

    model_config = ConfigDict(frozen=True)

    layers: int
    budget_bytes: int | None
    weight_bytes: int
    reserve_bytes: int
    bytes_per_sequence: int
    max_num_seqs: int
    max_seq_len: int

    @property
    def kv_cache_bytes(self) -> int:
        return self.bytes_per_sequence * self.max_num_seqs

    @property
    def kv_capacity_tokens(self) -> int:
        return self.max_num_seqs * self.max_seq_len

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.reserve_bytes + self.kv_cache_bytes


def weight_bytes(shape: ModelShape, layers: int, itemsize: int) -> int:
    return (shape.params_shared + layers * shape.params_per_layer) * itemsize


def bytes_per_sequence(shape: ModelShape, layers: int, max_seq_len: int, itemsize: int) -> int:
    """One slot of the KV cache through ``layers`` layers plus its exit-state row, at ``max_seq_len``."""
    return max_seq_len * (2 * layers * shape.num_kv_heads * shape.head_dim + shape.hidden_size) * itemsize


def activation_reserve(shape: ModelShape, max_prefill_tokens: int, max_rows: int, itemsize: int) -> int:
    """Transient memory of one step, held back from the KV cache.

    A prefill of ``max_prefill_tokens`` keeps a few hidden-sized tensors (residual, norm, the
    layer input kept for the exit gate), the fused Q/K/V and gate/up outputs; a decode step of
    ``max_rows`` rows makes float32 logits and their softmax.
    """
    q_kv = (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim
    per_token = 4 * shape.hidden_size + q_kv + 2 * shape.intermediate_size
    return max_prefill_tokens * per_token * itemsize + 2 * max_rows * shape.vocab_size * 4


def plan_memory(
    shape: ModelShape,
    layers: int,
    budget_bytes: int | None,
    *,
    itemsize: int,
    max_seq_len: int,
    max_batch_size: int,
    max_prefill_tokens: int,
) -> MemoryPlan:
    """Sequences the KV cache holds with ``layers`` layers; MemoryModelError if not even one fits."""
    if not 1 <= layers <= shape.num_layers_total:
        raise ValueError(f"layers must be in 1..{shape.num_layers_total}, got {layers}")
    weights = weight_bytes(shape, layers, itemsize)
    reserve = activation_reserve(shape, max_prefill_tokens, max_batch_size, itemsize)
    per_sequence = bytes_per_sequence(shape, layers, max_seq_len, itemsize)
    if budget_bytes is None:
        num_seqs = max_batch_size
    else:
        num_seqs = min(max_batch_size, max(0, (budget_bytes - weights - reserve) // per_sequence))
        if num_seqs < 1:
            raise MemoryModelError(
                f"a memory budget of {budget_bytes} bytes holds no sequence with {layers} layers: weights "
                f"{weights} + activation reserve {reserve} + one sequence of {max_seq_len} tokens {per_sequence}"
            )
    return MemoryPlan(
        layers=layers,
        budget_bytes=budget_bytes,
        weight_bytes=weights,
        reserve_bytes=reserve,
        bytes_per_sequence=per_sequence,
        max_num_seqs=num_seqs,
        max_seq_len=max_seq_len,
    )
