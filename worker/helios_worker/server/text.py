"""Generated token ids -> text deltas for streaming, with stop strings.

Text is decoded from all generated ids each time (byte-level BPE merges across tokens, so
per-token decoding is wrong) and only the part that can no longer change is released: an
incomplete UTF-8 character (decoded as U+FFFD) or a suffix that may be the start of a stop
string is held back until the next token settles it. The stop string itself is never sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT_CHAR = "\ufffd"


class TextStream:
    def __init__(self, tokenizer: Any, stop_strings: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stops = [stop for stop in stop_strings if stop]
        self._token_ids: list[int] = []
        self._text = ""
        self._num_sent = 0  # characters of _text already released
        self.is_stopped = False  # a stop string appeared; the text ends before it

    @property
    def text(self) -> str:
        """Everything released so far."""
        return self._text[: self._num_sent]

    def add(self, token_ids: Sequence[int]) -> str:
        """Take new tokens; return the text that is now safe to send."""
        if self.is_stopped or not token_ids:
            return ""
        self._token_ids += token_ids
        self._text = self._tokenizer.decode(self._token_ids, skip_special_tokens=True)
        stop_at = self._find_stop()
        if stop_at is not None:
            self.is_stopped = True
            self._text = self._text[:stop_at]
            return self._release(len(self._text))
        safe = len(self._text.rstrip(REPLACEMENT_CHAR))
        safe -= self._partial_stop_length(self._text[:safe])
        return self._release(safe)

    def finish(self) -> str:
        """The request ended: release whatever was held back."""
        return self._release(len(self._text))

    def _release(self, end: int) -> str:
        if end <= self._num_sent:
            return ""
        delta = self._text[self._num_sent : end]
        self._num_sent = end
        return delta

    def _find_stop(self) -> int | None:
        # Held-back text guarantees no stop string lies wholly inside what was already sent.
        longest = max((len(stop) for stop in self._stops), default=0)
        start = max(0, self._num_sent - longest + 1)
        found = [index for stop in self._stops if (index := self._text.find(stop, start)) >= 0]
        return min(found) if found else None

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best
