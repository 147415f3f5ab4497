"""Log-probabilities for the requests that ask for them, read back from the device once per step.

The engine hands over logits where a token is decided (a row's exit layer, or the prefill's last
layer for prompt tokens); ``add`` reduces them on the device to what is reported, the chosen
token's logprob and the top ``MAX_TOP_LOGPROBS`` alternatives ([rows, 1 + 2K], a fixed shape),
and ``flush`` at the end of the step copies everything gathered to the host in one transfer.
Requests that did not ask never reach this module: nothing extra runs for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from helios_worker.sampling import MAX_TOP_LOGPROBS
from helios_worker.stats import TokenLogprobs


@dataclass(frozen=True)
class LogprobTarget:
    """Where one row's result goes: appended to ``into``, with ``num_top`` alternatives kept."""

    into: list  # a RequestOutput's logprobs or prompt_logprobs
    token_id: int
    num_top: int


class LogprobCollector:
    def __init__(self) -> None:
        self._packed: list[torch.Tensor] = []  # [rows, 1 + 2K] each: chosen logprob, top logprobs, top ids
        self._targets: list[LogprobTarget] = []

    def add(self, logits: torch.Tensor, targets: list[LogprobTarget]) -> None:
        """``logits`` [rows, vocab], one row per target (the distribution its token came from)."""
        logprobs = logits.float().log_softmax(-1)  # [rows, vocab]
        chosen = torch.tensor([target.token_id for target in targets], device=logits.device)[:, None]
        top_values, top_ids = logprobs.topk(min(MAX_TOP_LOGPROBS, logprobs.shape[-1]), dim=-1)  # [rows, K]
        # float64 holds every token id exactly, so one tensor (one transfer) carries ids and values.
        packed = torch.cat([logprobs.gather(-1, chosen), top_values], -1).double()
        self._packed.append(torch.cat([packed, top_ids.double()], -1))
        self._targets += targets

    def flush(self) -> None:
        """Append every gathered row's TokenLogprobs to its target list (one device-to-host copy)."""
        if not self._targets:
            return
        rows = torch.cat(self._packed).tolist()
        width = (len(rows[0]) - 1) // 2
        for target, row in zip(self._targets, rows, strict=True):
            values, ids = row[1 : 1 + target.num_top], row[1 + width : 1 + width + target.num_top]
            top = tuple((int(token), value) for token, value in zip(ids, values, strict=True))
            target.into.append(TokenLogprobs(target.token_id, row[0], top))
        self.clear()

    def clear(self) -> None:
        self._packed, self._targets = [], []
