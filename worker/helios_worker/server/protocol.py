"""Everything that crosses the worker's HTTP API, as pydantic models.

The OpenAI part follows OpenAI's (legacy) completions and chat completions API; requests are
strict about types (``"max_tokens": "5"`` is an error, not 5) and ignore fields we do not use
(clients send many), but reject those whose value we cannot honour (``best_of`` other than
``n``, more than ``MAX_TOP_LOGPROBS`` alternatives, more than ``MAX_CHOICES`` choices) rather
than silently ignore them. ``ignore_eos`` is a vLLM extension.

Logprobs (completions: ``logprobs: k``, legacy format; chat: ``logprobs: true`` with
``top_logprobs: k``) are those of the distribution each token was chosen from: the LM head at
the token's exit layer (with calibrated exits, on the translated state), before temperature and
top-p, as vLLM reports them. Chat lists each token's ``k`` likeliest alternatives; a completion's
``top_logprobs`` dict holds them and the token itself (as vLLM's). With ``echo`` the prompt's
tokens come first, their logprobs from the prefill's states at the last loaded layer (the first
token has none: ``null``); ``max_tokens: 0`` with ``echo`` scores the prompt alone
(lm-evaluation-harness loglikelihood requests).

``n`` choices per prompt (completions also take a list of prompts, choice ``index`` =
prompt index x n + j) are separate engine requests; with a ``seed``, choice j samples with
``seed + j``. Every choice carries its own ``helios`` exit stats; the response's ``helios``
joins them in index order. Usage counts each prompt once and every choice's tokens.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from helios_worker.sampling import MAX_TOP_LOGPROBS

MAX_STOP_STRINGS = 16
MAX_CHOICES = 16  # n: more is a 400 (each choice is a sequence in the batch)
# OpenAI's "very unlikely": JSON has no -inf, and a float32 logprob can underflow to it.
MIN_LOGPROB = -9999.0

TokenIds = list[Annotated[int, Field(ge=0)]]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _Sampling(_Request):
    """Fields shared by completions and chat completions."""

    model: str | None = Field(default=None, description="served model name (default: the one served)")
    max_tokens: int | None = Field(default=None, ge=1, description="tokens to generate at most")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = Field(default=None, description="stop strings (not included in the text)")
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, description="choices per prompt")
    stream: bool = False
    ignore_eos: bool = Field(default=False, description="keep going past end-of-sequence (vLLM extension)")
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not stop for stop in stops):
            raise ValueError("stop strings must not be empty")
        return value

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Sampling):
    prompt: str | list[str] | TokenIds | list[TokenIds] = Field(
        description="text or token ids; a list of texts or of token id lists is a batch of prompts"
    )
    max_tokens: int | None = Field(default=None, ge=0, description="tokens to generate at most (0: needs echo)")
    echo: bool = Field(default=False, description="prepend the prompt to the text (and its tokens to the logprobs)")
    logprobs: int | None = Field(
        default=None, ge=0, le=MAX_TOP_LOGPROBS, description="each token's logprob and this many alternatives"
    )
    best_of: int | None = Field(default=None, description="only n (or 1): choices are not ranked")

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, value: int | None, info: Any) -> int | None:
        if value not in (None, 1, info.data.get("n", 1)):
            raise ValueError("only best_of equal to n (or 1) is supported: choices are not ranked")
        return value


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="newer name of max_tokens (wins)")
    logprobs: bool | None = Field(default=False, description="each generated token's logprob")
    top_logprobs: int | None = Field(
        default=None, ge=0, le=MAX_TOP_LOGPROBS, description="alternatives per token (needs logprobs)"
    )

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: Any) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value


# --- responses ----------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class LayerChangeMark(BaseModel):
    at_token: int = Field(description="tokens this request had generated when the change took effect")
    layers: int


class HeliosStats(BaseModel):
    """Where a choice's generated tokens left the network; the response's joins every choice's."""

    layers_loaded: int
    layers_total: int
    mean_exit_layer: float | None
    num_breaches: int = Field(description="tokens that reached the last loaded layer below the exit threshold")
    exit_layers: list[int] = Field(
        description="per generated token (echoed prompt tokens ran every loaded layer); choice by choice in index order"
    )
    layer_changes: list[LayerChangeMark] = Field(
        default_factory=list, description="at_token indexes exit_layers: from there on, with this many layers"
    )


FinishReason = Literal["stop", "length", "abort"]


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs: one entry per token, echoed prompt tokens first."""

    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="null for the first prompt token: nothing predicts it")
    top_logprobs: list[dict[str, float] | None] = Field(description="the k likeliest and the token itself")
    text_offset: list[int] = Field(description="where each token's text starts (token texts summed, as vLLM)")


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionLogprobs | None = None
    helios: HeliosStats | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    helios: HeliosStats | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = Field(description="UTF-8 of the token's text")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="the top_logprobs likeliest, likeliest first")


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None
    helios: HeliosStats | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    helios: HeliosStats | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None
    helios: HeliosStats | None = Field(default=None, description="in the choice's finish chunk")


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    helios: HeliosStats | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "helios"
    root: str = Field(description="the model reference it was loaded from")
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- the worker's own API ------------------------------------------------------------------


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["loading", "ready", "draining", "failed"]
    reason: str | None = None


class LayersRequest(_Request):
    layers: int = Field(ge=1, description="decoder layers to serve with, 1..N")


class LayersResponse(BaseModel):
    layers: int
    previous_layers: int
    seconds: float = Field(description="time the engine spent on the change (no step ran meanwhile)")
    weight_bytes: int = Field(description="checkpoint bytes of the weights now held")
    bytes_read: int = Field(description="checkpoint bytes read for added layers (0 when shrinking)")
    max_num_seqs: int = Field(description="sequences the KV cache holds at once at the new depth")
    kv_cache_capacity_tokens: int = Field(description="tokens the KV cache holds at the new depth")
    memory_budget_bytes: int | None = Field(description="the worker's memory budget (None: no budget)")


class StateResponse(BaseModel):
    status: Literal["loading", "ready", "draining", "failed"]
    model: str
    model_ref: str
    architecture: str | None = None
    layers_loaded: int | None = None
    layers_total: int | None = None
    exit_threshold: float
    early_exit: bool
    min_exit_layer: int
    max_batch_size: int
    max_queue: int
    max_seq_len: int | None = None
    num_running: int
    num_waiting: int
    num_in_flight: int = Field(description="accepted requests not finished yet (running + waiting + handing over)")
    weight_bytes: int | None = None
    kv_cache_bytes_per_token: int | None = None


class RecentPromptsResponse(BaseModel):
    capacity: int
    prompts: list[str] = Field(description="oldest first")


class ShadowSample(BaseModel):
    """A served greedy request: its prompt and the tokens it was answered with."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt_token_ids: list[int] = Field(min_length=1)
    token_ids: list[int] = Field(min_length=1)


class ShadowSamplesResponse(BaseModel):
    samples: list[ShadowSample] = Field(description="oldest first; the worker forgets them once read")


class ShadowScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    samples: list[ShadowSample] = Field(max_length=1024)


class ShadowResult(BaseModel):
    """Of ``tokens`` served tokens replayed at full depth, ``matches`` were the full-depth choice."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tokens: int = Field(ge=0)
    matches: int = Field(ge=0)

    @field_validator("matches")
    @classmethod
    def _at_most_tokens(cls, matches: int, info: Any) -> int:
        if matches > info.data.get("tokens", matches):
            raise ValueError("cannot exceed tokens")
        return matches
