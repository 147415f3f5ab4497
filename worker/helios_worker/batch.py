"""What one step's layers need to know about its rows: slots, positions, rotary, masks.

Built once per step by ``prepare_prefill`` / ``prepare_decode`` (the one place where masks
and positions are set up) and narrowed with ``select`` when rows exit, so later layers see
only the rows still running.

Decode attention reads the cache through a *span*: the contiguous run of slots from the
lowest to the highest running slot. A view of that span costs nothing whichever rows are
still running; rows outside the running set (exited, finished, or free slots) are masked
out and their outputs dropped, so no layer ever gathers a context into a copy. When the
span would read much more context than the rows own (rows left from the middle, long
contexts), attention runs once per contiguous run of slots instead (``attention_runs``):
still views, more calls, no wasted reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

# Attend per run of contiguous slots when the span holds >= 25% more slots than rows, the
# context is long enough for the wasted reads to outweigh extra calls, and runs are few.
RUNS_MIN_WASTE = 0.25
RUNS_MIN_CONTEXT = 256
RUNS_MAX = 8


@dataclass(frozen=True)
class PrefillBatch:
    """Right-padded fresh prompts: ``positions`` [rows, seq], all starting at 0."""

    slots: torch.Tensor  # [rows]
    positions: torch.Tensor  # [rows, seq]
    rotary: Any  # (cos, sin) [rows, seq, head_dim], or None for learned positions
    dtype: torch.dtype

    @property
    def context_len(self) -> int:
        return self.positions.shape[1]

    @property
    def mask(self) -> torch.Tensor:
        """Additive causal mask [1, 1, seq, seq] for HF attention modules (GPT-2, OPT)."""
        width = self.positions.shape[1]
        future = torch.ones(width, width, dtype=torch.bool, device=self.slots.device).triu(1)
        return _additive(future, self.dtype)[None, None]


@dataclass(frozen=True)
class Run:
    """Rows ``row_start..row_end-1`` sit in consecutive slots from ``slot_start``."""

    row_start: int
    row_end: int
    slot_start: int


@dataclass(frozen=True)
class DecodeBatch:
    """One new token per row at ``positions`` [rows, 1], attending to its cached context."""

    slots: torch.Tensor  # [rows]
    positions: torch.Tensor  # [rows, 1]
    rotary: Any  # (cos, sin) [rows, 1, head_dim], or None
    context_len: int
    slot_list: tuple[int, ...]  # the same slots on the host: spans are sized without a device sync
    span_start: int
    span_size: int
    span_rows: torch.Tensor  # [rows]: each row's index inside the span
    span_mask: torch.Tensor  # [span, 1, 1, context]: additive, each span slot sees 0..its position
    dtype: torch.dtype

    @property
    def fills_span(self) -> bool:
        """Rows are exactly the span's slots in order: attention needs no scatter or gather."""
        return len(self.slot_list) == self.span_size and all(
            s == self.span_start + i for i, s in enumerate(self.slot_list)
        )

    @property
    def mask(self) -> torch.Tensor:
        """Per-row additive mask [rows, 1, 1, context] for HF attention modules."""
        return self.span_mask[self.span_rows]

    @cached_property
    def attention_runs(self) -> list[Run] | None:
        """Runs of contiguous slots to attend one by one, or None to attend through the whole span.

        Needs rows in ascending slot order (the engine decodes them so).
        """
        rows = len(self.slot_list)
        if (
            self.context_len < RUNS_MIN_CONTEXT
            or self.span_size < (1 + RUNS_MIN_WASTE) * rows
            or any(b <= a for a, b in zip(self.slot_list, self.slot_list[1:], strict=False))
        ):
            return None
        runs = [Run(0, 1, self.slot_list[0])]
        for row in range(1, rows):
            last = runs[-1]
            if self.slot_list[row] == last.slot_start + (row - last.row_start):
                runs[-1] = Run(last.row_start, row + 1, last.slot_start)
            else:
                runs.append(Run(row, row + 1, self.slot_list[row]))
        return runs if len(runs) <= RUNS_MAX else None

    def select(self, keep: list[int]) -> DecodeBatch:
        """The batch restricted to rows ``keep`` (indices into this batch's rows, ascending)."""
        index = torch.tensor(keep, device=self.slots.device)
        slot_list = tuple(self.slot_list[i] for i in keep)
        start = min(slot_list)
        offset = start - self.span_start
        return DecodeBatch(
            slots=self.slots[index],
            positions=self.positions[index],
            rotary=None if self.rotary is None else tuple(t[index] for t in self.rotary),
            context_len=self.context_len,
            slot_list=slot_list,
            span_start=start,
            span_size=max(slot_list) - start + 1,
            span_rows=self.span_rows[index] - offset,
            span_mask=self.span_mask[offset : offset + max(slot_list) - start + 1],
            dtype=self.dtype,
        )


def _additive(blocked: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mask = torch.zeros(blocked.shape, dtype=dtype, device=blocked.device)
    return mask.masked_fill_(blocked, torch.finfo(dtype).min)


def prepare_prefill(slots: list[int], positions: torch.Tensor, dtype: torch.dtype, rotary_fn) -> PrefillBatch:
    """Rows at cache ``slots`` with prompt ``positions`` [rows, seq]; ``rotary_fn(positions)`` gives
    the family's position inputs (None without rotary)."""
    return PrefillBatch(torch.tensor(slots, device=positions.device), positions, rotary_fn(positions), dtype)


def prepare_decode(
    slots: list[int], positions: list[int], device: torch.device, dtype: torch.dtype, rotary_fn
) -> DecodeBatch:
    """Rows at cache ``slots`` writing their next token at ``positions`` (host lists, one per row)."""
    start = min(slots)
    span_size = max(slots) - start + 1
    context_len = max(positions) + 1
    slot_tensor = torch.tensor(slots, device=device)
    position_tensor = torch.tensor(positions, device=device)[:, None]  # [rows, 1]
    span_rows = slot_tensor - start
    # each span slot may see positions 0..its own; slots with no row this step see nothing
    visible_until = torch.full((span_size,), -1, dtype=torch.long, device=device)
    visible_until[span_rows] = position_tensor[:, 0]
    blocked = torch.arange(context_len, device=device)[None, :] > visible_until[:, None]  # [span, context]
    return DecodeBatch(
        slots=slot_tensor,
        positions=position_tensor,
        rotary=rotary_fn(position_tensor),
        context_len=context_len,
        slot_list=tuple(slots),
        span_start=start,
        span_size=span_size,
        span_rows=span_rows,
        span_mask=_additive(blocked, dtype)[:, None, None, :],
        dtype=dtype,
    )
