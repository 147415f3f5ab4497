"""Plain statistics the engine emits; metrics and reports are built from these elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenStats:
    """One generated token: where it left the stack and how sure it was there."""

    token_id: int
    exit_layer: int  # 1-based: the token's hidden state went through this many decoder layers
    confidence: float  # max softmax probability at the exit layer
    is_breach: bool  # reached the last loaded layer (< all layers) below the exit threshold
    # Only in evaluation (probe) mode: the head's confidence and top token after each layer 1..L.
    layer_confidences: tuple[float, ...] | None = None
    layer_tokens: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TokenLogprobs:
    """A token's log-probability under the distribution it came from, and the likeliest alternatives."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), likeliest first


@dataclass(frozen=True)
class StepStats:
    """One engine step: what ran and how long it took."""

    num_prefills: int
    num_decodes: int
    num_waiting: int
    num_running: int
    num_layer_evals: int  # sum over rows of the decoder layers actually computed in decode
    duration_seconds: float
    kv_cache_usage: float  # used token slots / capacity
    num_head_rows: int = 0  # rows that went through the LM head (exit tests and greedy exits)


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    token_stats: list[TokenStats] = field(default_factory=list)
    # Only when the request asked for them (SamplingParams.logprobs / prompt_logprobs): one per
    # generated token, and one per prompt token with None for the first.
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    arrival_time: float = 0.0
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def exit_layers(self) -> list[int]:
        return [s.exit_layer for s in self.token_stats]

    @property
    def confidences(self) -> list[float]:
        return [s.confidence for s in self.token_stats]

    @property
    def num_breaches(self) -> int:
        return sum(s.is_breach for s in self.token_stats)
