"""Confidence gates: an O(hidden) test per row that decides who pays for the LM head.

At an exit layer the engine first asks the gate which running rows might be confident; only
those rows go through the final norm + LM head, and the usual max-softmax >= threshold test
is applied to their distribution, which is also the one the token is drawn from (the head
never runs twice for one token at one layer). At the last loaded layer every remaining row
gets the head: that is greedy exit, whatever the gate says.

- ``none``: every running row gets the head (the plain exit test).
- ``saturation``: CALM's hidden-state saturation (Schuster et al. 2022): the cosine between a
  layer's input and output; a state that stopped changing is likely settled. No training.
- ``trained``: a linear classifier per exit layer on the hidden state, predicting "this
  layer's top-1 equals the last layer's", fitted by ``helios calibrate``
  (``helios_worker.exit_sidecar.CalibratedExits``; ``LinearGate`` is the bare interface); the
  rows it passes get the translated head and exit at the layer's calibrated confidence.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F

GateName = Literal["none", "saturation", "trained"]
GATE_NAMES: tuple[str, ...] = ("none", "saturation", "trained")
DEFAULT_SATURATION_THRESHOLD = 0.95


class ExitGate(Protocol):
    name: str

    def passes(self, layer: int, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor | None:
        """Rows worth an exit test at 1-based ``layer``: bool [rows] from its input and output [rows, hidden].

        None means every row (no per-row work at all).
        """
        ...


class NoGate:
    name = "none"

    def passes(self, layer: int, before: torch.Tensor, after: torch.Tensor) -> None:
        return None


class SaturationGate:
    name = "saturation"

    def __init__(self, threshold: float = DEFAULT_SATURATION_THRESHOLD) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"saturation gate threshold is a cosine in [-1, 1], got {threshold}")
        self.threshold = threshold

    def passes(self, layer: int, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(before.float(), after.float(), dim=-1) >= self.threshold


class LinearGate:
    """p(settled) = sigmoid(w_l . h + b_l) >= threshold; a layer without weights passes nobody."""

    name = "trained"

    def __init__(self, weights: dict[int, tuple[torch.Tensor, torch.Tensor]], threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"trained gate threshold is a probability in (0, 1), got {threshold}")
        self.weights = weights  # 1-based layer -> (w [hidden], b [])
        self.threshold = threshold

    @property
    def layers(self) -> list[int]:
        return sorted(self.weights)

    def passes(self, layer: int, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        if layer not in self.weights:
            return torch.zeros(after.shape[0], dtype=torch.bool, device=after.device)
        weight, bias = self.weights[layer]
        return torch.sigmoid(after.float() @ weight.float() + bias.float()) >= self.threshold


def make_gate(name: str, threshold: float | None = None) -> ExitGate:
    """The gate called ``name`` (a ``GATE_NAMES`` entry); ``threshold`` None takes the gate's default."""
    if name == "none":
        return NoGate()
    if name == "saturation":
        return SaturationGate(DEFAULT_SATURATION_THRESHOLD if threshold is None else threshold)
    if name == "trained":
        raise ValueError("the trained exit gate needs calibrated exits: --exits DIR, written by helios calibrate")
    raise ValueError(f"unknown exit gate {name!r}; choose one of: {', '.join(GATE_NAMES)}")
