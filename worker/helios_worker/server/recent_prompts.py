"""The last N prompt texts, for HELIOS's periodic reassessment on real traffic.

Off unless ``--record-prompts N`` is given: prompts are user data and stay out of memory by
default. Chat requests are kept as the template-free "role: content" join, so a candidate
with another chat template (or none) can be evaluated on them too.
"""

from __future__ import annotations

import threading
from collections import deque


class RecentPrompts:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._prompts: deque[str] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, prompt: str) -> None:
        if prompt.strip():
            with self._lock:
                self._prompts.append(prompt)

    def snapshot(self) -> list[str]:
        """Oldest first."""
        with self._lock:
            return list(self._prompts)
