"""Sampling parameters and the per-row token choice at an exit layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Most alternatives a token's logprobs may list (OpenAI's legacy limit); the engine always takes
# this many on the device, so every step's logprobs have one shape.
MAX_TOP_LOGPROBS = 5


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64  # 0: prefill only (a request for its prompt's logprobs)
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # Each generated token's logprob and this many top alternatives, from the distribution at its
    # exit layer before temperature and top-p (as vLLM); None: none are computed.
    logprobs: int | None = None
    # The same for prompt tokens 2.. from the prefill's last layer (the first has no context).
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        for name, value in (("logprobs", self.logprobs), ("prompt_logprobs", self.prompt_logprobs)):
            if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
                raise ValueError(f"{name} must be in 0..{MAX_TOP_LOGPROBS}, got {value}")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Draw one token from ``logits`` [vocab] with temperature and nucleus (top-p) filtering."""
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
