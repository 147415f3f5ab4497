"""Requests -> what the engine takes: prompt token ids and SamplingParams, checked up front.

Every check that depends on the request happens here, before the request reaches the engine
thread, so a bad request is a 400 naming its parameter and can never fail an engine step that
other requests share (out-of-vocabulary ids, overlong prompts, overflow-prone temperatures).

Chat: ``messages`` go through the tokenizer's chat template (with the generation prompt).
A tokenizer without a template gets a plain join, one ``role: content`` line per message and
a final ``assistant:`` line, tokenized like a completion prompt.

A completion may be a batch of prompts; each prompt gets ``n`` SamplingParams (``choice_params``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from helios_worker.sampling import SamplingParams
from helios_worker.server.errors import APIError
from helios_worker.server.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest

# Completions default to OpenAI's 16 tokens; chat defaults to the rest of the context (as vLLM).
DEFAULT_COMPLETION_TOKENS = 16
# Below this a temperature only sharpens float32 logits into overflow: clamp (vLLM does too).
MIN_TEMPERATURE = 0.01


@dataclass(frozen=True)
class PreparedPrompt:
    token_ids: list[int]
    text: str  # for the recent-prompts buffer, and what a completion's echo sends


def completion_prompts(request: CompletionRequest, tokenizer: Any, vocab_size: int) -> list[PreparedPrompt]:
    """The request's prompts: one, or a batch (a list of texts or of token id lists)."""
    prompt = request.prompt
    if isinstance(prompt, str):
        return [PreparedPrompt(tokenizer(prompt).input_ids, prompt)]
    if not prompt:
        raise APIError(400, "prompt: it is empty (no prompts)", param="prompt")
    if isinstance(prompt[0], int):
        return [_token_prompt(prompt, tokenizer, vocab_size)]
    if isinstance(prompt[0], str):
        return [PreparedPrompt(tokenizer(text).input_ids, text) for text in prompt]
    return [_token_prompt(token_ids, tokenizer, vocab_size) for token_ids in prompt]


def _token_prompt(token_ids: list[int], tokenizer: Any, vocab_size: int) -> PreparedPrompt:
    if token_ids and max(token_ids) >= vocab_size:
        raise APIError(400, f"prompt: token ids must be below the vocabulary size {vocab_size}", param="prompt")
    return PreparedPrompt(list(token_ids), tokenizer.decode(token_ids, skip_special_tokens=True))


def plain_chat_text(messages: list[ChatMessage]) -> str:
    """The template-free rendering: ``role: content`` lines, then ``assistant:``."""
    return "".join(f"{message.role}: {message.text}\n" for message in messages) + "assistant:"


def chat_prompt(request: ChatCompletionRequest, tokenizer: Any) -> PreparedPrompt:
    plain = plain_chat_text(request.messages)
    if not getattr(tokenizer, "chat_template", None):
        return PreparedPrompt(tokenizer(plain).input_ids, plain)
    conversation = [{"role": message.role, "content": message.text} for message in request.messages]
    try:
        rendered = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    except Exception as error:  # templates raise (jinja) for conversations they do not accept
        raise APIError(400, f"messages: the model's chat template rejected them: {error}", param="messages") from None
    # The template writes its own special tokens (BOS included); do not add them twice.
    return PreparedPrompt(tokenizer(rendered, add_special_tokens=False).input_ids, plain)


def sampling_params(
    request: CompletionRequest | ChatCompletionRequest, num_prompt_tokens: int, max_seq_len: int
) -> SamplingParams:
    """SamplingParams for ``request``; 400 if the prompt or the token budget does not fit the context."""
    is_chat = isinstance(request, ChatCompletionRequest)
    requested, limit_param = request.max_tokens, "max_tokens"
    if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None:
        requested, limit_param = request.max_completion_tokens, "max_completion_tokens"
    if num_prompt_tokens == 0:
        raise APIError(400, "prompt: it is empty (no tokens)", param="prompt")
    is_echo = isinstance(request, CompletionRequest) and request.echo
    if requested == 0 and not is_echo:
        raise APIError(400, "max_tokens: 0 generates nothing; it needs echo (to score the prompt)", param="max_tokens")
    room = max_seq_len - num_prompt_tokens
    if room < (0 if requested == 0 else 1):
        raise APIError(
            400,
            f"prompt: {num_prompt_tokens} tokens leave no room in the context of {max_seq_len} tokens",
            param="prompt",
            code="context_length_exceeded",
        )
    if requested is None:
        requested = room if is_chat else min(DEFAULT_COMPLETION_TOKENS, room)
    if requested > room:
        raise APIError(
            400,
            f"{limit_param}: prompt ({num_prompt_tokens} tokens) + {limit_param} ({requested}) exceeds "
            f"the context of {max_seq_len} tokens",
            param=limit_param,
            code="context_length_exceeded",
        )
    temperature = request.temperature
    if 0.0 < temperature < MIN_TEMPERATURE:
        temperature = MIN_TEMPERATURE
    if isinstance(request, ChatCompletionRequest):
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        prompt_logprobs = None
    else:
        logprobs = request.logprobs
        prompt_logprobs = request.logprobs if request.echo else None
    return SamplingParams(
        max_new_tokens=requested,
        temperature=temperature,
        top_p=request.top_p,
        seed=request.seed,
        ignore_eos=request.ignore_eos,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


def choice_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """One SamplingParams per choice; with a seed, choice j samples with ``seed + j`` (repeatable, and
    the choices differ). Without one each choice draws its own seed."""
    if params.seed is None:
        return [params] * n
    return [dataclasses.replace(params, seed=(params.seed + j) % 2**63) for j in range(n)]
