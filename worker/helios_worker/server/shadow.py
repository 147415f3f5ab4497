"""The worker's half of the shadow accuracy check: keep a sample of served requests, score them.

A serving worker started with ``--shadow-fraction F`` keeps each finished greedy request with
probability F (prompt and served token ids, in a bounded buffer) until ``helios run`` reads
them. A worker with every layer loaded scores them: one teacher-forced forward over prompt +
served tokens per sample, counting the served tokens that equal the full-depth greedy choice.
Only greedy requests are kept: a sampled token says nothing about the greedy choice.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from helios_worker.server.protocol import ShadowSample

if TYPE_CHECKING:
    from helios_worker.loading import LoadedModel

DEFAULT_CAPACITY = 256


class ShadowSampler:
    """Thread-safe; the oldest samples go when ``capacity`` is reached before they are read."""

    def __init__(self, fraction: float, capacity: int = DEFAULT_CAPACITY, seed: int | None = None) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError("fraction must be in (0, 1]")
        self.fraction = fraction
        self._samples: deque[ShadowSample] = deque(maxlen=capacity)
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def offer(self, prompt_token_ids: list[int], token_ids: list[int]) -> None:
        if not prompt_token_ids or not token_ids:
            return
        with self._lock:
            if self._random.random() < self.fraction:
                self._samples.append(ShadowSample(prompt_token_ids=list(prompt_token_ids), token_ids=list(token_ids)))

    def drain(self) -> list[ShadowSample]:
        """Oldest first; the buffer is empty afterwards."""
        with self._lock:
            samples = list(self._samples)
            self._samples.clear()
        return samples


@dataclass(frozen=True)
class ShadowScore:
    num_tokens: int
    num_matches: int


def score_samples(loaded: LoadedModel, samples: list[ShadowSample]) -> ShadowScore:
    """Teacher-forced full-depth greedy choice for every served token (blocking: run it off the loop)."""
    from helios_worker.scoring import sequence_logits

    num_tokens = num_matches = 0
    for sample in samples:
        prompt, served = sample.prompt_token_ids, sample.token_ids
        # The last served token is never an input: position i's logits predict token i + 1.
        logits = sequence_logits(loaded, prompt + served[:-1])[len(prompt) - 1 :]  # [len(served), vocab]
        full_depth = logits.argmax(dim=-1).tolist()
        num_tokens += len(served)
        num_matches += sum(int(a == b) for a, b in zip(full_depth, served, strict=True))
    return ShadowScore(num_tokens=num_tokens, num_matches=num_matches)
