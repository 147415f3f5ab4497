"""Everything that crosses the worker's HTTP API, as pydantic models.

The OpenAI part follows OpenAI's (legacy) completions and chat completions API; requests are
strict about types (``"max_tokens": "5"`` is an error, not 5) and ignore fields we do not use
(clients send many), but reject those whose non-default value we cannot honour (``n``,
``logprobs``, ``echo``, ``best_of``) rather than silently ignore them. ``ignore_eos`` is a
vLLM extension. Responses carry an extra ``helios`` object with the request's exit stats.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_STRINGS = 16


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
    n: int = Field(default=1, description="only 1 is supported")
    stream: bool = False
    ignore_eos: bool = Field(default=False, description="keep going past end-of-sequence (vLLM extension)")
    logprobs: Any = Field(default=None, description="not supported")
    user: str | None = None

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value not in (None, False, 0):
            raise ValueError("logprobs are not supported")
        return value

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
    prompt: str | list[Annotated[int, Field(ge=0)]] = Field(description="text, or a list of token ids")
    echo: bool = Field(default=False, description="not supported")
    best_of: int | None = Field(default=None, description="not supported")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only best_of=1 is supported")
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


# --- responses ----------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class LayerChangeMark(BaseModel):
    at_token: int = Field(description="tokens this request had generated when the change took effect")
    layers: int


class HeliosStats(BaseModel):
    """Where this request's tokens left the network."""

    layers_loaded: int
    layers_total: int
    mean_exit_layer: float | None
    num_breaches: int = Field(description="tokens that reached the last loaded layer below the exit threshold")
    exit_layers: list[int]
    layer_changes: list[LayerChangeMark] = Field(default_factory=list)


FinishReason = Literal["stop", "length", "abort"]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


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


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason | None = None
    logprobs: None = None


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
    logprobs: None = None


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
