"""Static KV cache: one buffer per layer, one slot per running sequence, allocated once.

Our own Llama-family layers ``write`` K/V at (slot, position) and read it back through
``span``: a view of a contiguous run of slots, never a copy (see ``helios_worker.batch``).

HF attention modules (GPT-2, OPT) call ``cache.update(key, value, layer_idx)`` and attend to
whatever it returns; before each layer call the engine ``bind``s the rows (slots) and
positions being computed, so the same layer call can serve any subset of the batch. When
those rows are not contiguous, ``update`` has to gather their context: that copy is the
price of keeping HF modules for these two families.
"""

from __future__ import annotations

import torch


class SlotKVCache:
    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        head_dim: int,
        max_seq_len: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self._shape = (num_slots, num_kv_heads, max_seq_len, head_dim)
        self._dtype = dtype
        self._device = device
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.resize(num_layers)
        self._slots = torch.zeros(1, dtype=torch.long, device=device)
        self._positions = torch.zeros(1, 1, dtype=torch.long, device=device)
        self._contiguous: slice | None = None
        self._context_len = 0

    @classmethod
    def for_model(cls, loaded, num_slots: int, max_seq_len: int, num_layers: int | None = None) -> SlotKVCache:
        """A cache shaped for ``loaded`` (a ``LoadedModel``): its KV heads, head size, dtype and device."""
        shape = loaded.shape
        layers = loaded.num_layers_loaded if num_layers is None else num_layers
        return cls(layers, num_slots, shape.num_kv_heads, shape.head_dim, max_seq_len, loaded.dtype, loaded.device)

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def bytes_per_token(self) -> int:
        """KV bytes one token occupies across all layers."""
        _, heads, _, dim = self._shape
        return 2 * self.num_layers * heads * dim * self._dtype.itemsize

    def resize(self, num_layers: int) -> None:
        """Add zeroed buffers for new layers or free those of dropped layers."""
        del self.keys[num_layers:], self.values[num_layers:]
        while len(self.keys) < num_layers:
            self.keys.append(torch.zeros(self._shape, dtype=self._dtype, device=self._device))
            self.values.append(torch.zeros(self._shape, dtype=self._dtype, device=self._device))

    def resize_slots(self, num_slots: int) -> None:
        """Keep slots ``0..num_slots-1`` (new ones zeroed); one layer at a time, so the transient is one layer."""
        keep = min(num_slots, self.num_slots)
        self._shape = (num_slots, *self._shape[1:])
        for buffers in (self.keys, self.values):
            for index, old in enumerate(buffers):
                new = torch.zeros(self._shape, dtype=self._dtype, device=self._device)
                new[:keep] = old[:keep]
                buffers[index] = new
                del old
        self.num_slots = num_slots

    def move_slot(self, source: int, target: int) -> None:
        """Copy one sequence's K/V from slot ``source`` to slot ``target`` in every layer."""
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                buffer[target] = buffer[source]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def bind(self, slots: torch.Tensor, positions: torch.Tensor, context_len: int) -> None:
        """Rows about to be computed: ``slots`` [rows], ``positions`` [rows, seq]; attend to [0, context_len)."""
        self._slots = slots
        self._positions = positions
        self._context_len = context_len
        first = int(slots[0])
        is_run = slots.numel() == 1 or bool((slots[1:] - slots[:-1] == 1).all())
        self._contiguous = slice(first, first + slots.numel()) if is_run else None

    def write(
        self, layer_idx: int, slots: torch.Tensor, positions: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> None:
        """Store ``key``/``value`` [rows, kv_heads, seq, head_dim] at ``slots`` [rows], ``positions`` [rows, seq]."""
        rows = slots[:, None]
        # advanced indices on dims 0 and 2 put [rows, seq] first: [rows, seq, kv_heads, head_dim]
        self.keys[layer_idx][rows, :, positions] = key.transpose(1, 2)
        self.values[layer_idx][rows, :, positions] = value.transpose(1, 2)

    def span(self, layer_idx: int, start: int, size: int, context_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of slots ``start .. start+size-1`` over positions [0, context_len): [span, kv_heads, context, dim]."""
        end = start + size
        return self.keys[layer_idx][start:end, :, :context_len], self.values[layer_idx][start:end, :, :context_len]

    def read(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of the bound rows over the bound context: [rows, kv_heads, context_len, head_dim]."""
        n = self._context_len
        if self._contiguous is not None:  # a view, no copy
            return self.keys[layer_idx][self._contiguous, :, :n], self.values[layer_idx][self._contiguous, :, :n]
        return self.keys[layer_idx][self._slots, :, :n], self.values[layer_idx][self._slots, :, :n]

    # --- the interface HF attention modules call ----------------------------------------
    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.write(layer_idx, self._slots, self._positions, key, value)
        return self.read(layer_idx)
