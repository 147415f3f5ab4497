"""The engine's TokenLogprobs in the API's two shapes: completions' legacy lists, chat's objects.

A token's text is the token decoded on its own, special tokens included (as vLLM shows them);
chat's ``bytes`` are that text's UTF-8. A completion's ``text_offset`` sums the texts of the
tokens before it, counting special tokens (never in the returned text) as empty, as vLLM sums
them; a writer keeps the running offset so a stream's chunks continue where the last one ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from helios_worker.server.protocol import (
    MIN_LOGPROB,
    ChatLogprobs,
    CompletionLogprobs,
    TokenLogprob,
    TopLogprob,
)
from helios_worker.stats import TokenLogprobs


def _reported(logprob: float) -> float:
    return max(logprob, MIN_LOGPROB)


def _token_texts(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    return tokenizer.batch_decode([[token] for token in token_ids])


def _top_ids(entries: Sequence[TokenLogprobs | None]) -> list[int]:
    return [token for entry in entries if entry is not None for token, _ in entry.top]


class CompletionLogprobsWriter:
    """One choice's legacy logprobs, written piece by piece (a stream) or at once."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._special_ids = set(tokenizer.all_special_ids)
        self.offset = 0  # characters of text before the next token

    def write(self, token_ids: Sequence[int], entries: Sequence[TokenLogprobs | None]) -> CompletionLogprobs:
        """``entries`` align with ``token_ids``; None where a token has no logprob (the prompt's first)."""
        texts = _token_texts(self._tokenizer, [*token_ids, *_top_ids(entries)])
        token_texts, top_texts = texts[: len(token_ids)], iter(texts[len(token_ids) :])
        token_logprobs: list[float | None] = []
        top_logprobs: list[dict[str, float] | None] = []
        offsets: list[int] = []
        for token, text, entry in zip(token_ids, token_texts, entries, strict=True):
            offsets.append(self.offset)
            self.offset += 0 if token in self._special_ids else len(text)
            if entry is None:
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            top = {next(top_texts): _reported(logprob) for _, logprob in entry.top}
            top.setdefault(text, _reported(entry.logprob))  # the token itself is always listed (vLLM)
            token_logprobs.append(_reported(entry.logprob))
            top_logprobs.append(top)
        return CompletionLogprobs(
            tokens=token_texts, token_logprobs=token_logprobs, top_logprobs=top_logprobs, text_offset=offsets
        )


def chat_logprobs(tokenizer: Any, entries: Sequence[TokenLogprobs]) -> ChatLogprobs:
    """Chat's ``logprobs.content``: per generated token, its logprob and its alternatives."""
    texts = _token_texts(tokenizer, [entry.token_id for entry in entries] + _top_ids(entries))
    token_texts, top_texts = texts[: len(entries)], iter(texts[len(entries) :])

    def top_logprob(text: str, logprob: float) -> TopLogprob:
        return TopLogprob(token=text, logprob=_reported(logprob), bytes=list(text.encode()))

    content = [
        TokenLogprob(
            token=text,
            logprob=_reported(entry.logprob),
            bytes=list(text.encode()),
            top_logprobs=[top_logprob(next(top_texts), logprob) for _, logprob in entry.top],
        )
        for text, entry in zip(token_texts, entries, strict=True)
    ]
    return ChatLogprobs(content=content)
