"""The OpenAI API through the real ``openai`` SDK: logprobs, echo, n choices, and their 400s.

The worker runs in-process (tests/test_server_harness.py) on helios-ee-tiny with an exit test at
every layer, so structured prompts leave at intermediate layers: a logprob taken from the wrong
layer's distribution differs from the one the token came from. The oracles are plain HF
(``AutoModelForCausalLM``): tests/reference_early_exit.py for generated tokens, a full forward
for prompt tokens.
"""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoTokenizer

import helios_worker
from helios_worker.server.settings import ServerSettings
from tests.reference_early_exit import HFModel, reference_generate
from tests.test_server_harness import live_server

MODEL_DIR = Path(helios_worker.__file__).parent / "assets" / "helios-ee-tiny"
NUM_LAYERS = 8
THRESHOLD = 0.8
EXIT_LAYERS = list(range(1, NUM_LAYERS + 1))  # --exit-layers all: the same for the oracle at every step
MODEL = "ee-tiny"
STRUCTURED = "count from 41 : 41 42"  # exits around layer 4
PROSE = "The return statement"  # reaches the last layer; varied samples
TOLERANCE = 1e-4  # float32, our fused layers against HF's


@pytest.fixture(scope="module")
def live():
    torch.set_num_threads(1)  # two threads spin-wait on each other on a shared CPU
    settings = ServerSettings(
        model="helios-ee-tiny", served_model_name=MODEL, exit_layers="all", exit_threshold=THRESHOLD, max_seq_len=256
    )
    with live_server(settings) as server:
        yield server


@pytest.fixture(scope="module")
def client(live):
    with openai.OpenAI(base_url=f"{live.base_url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def hf() -> HFModel:
    return HFModel(MODEL_DIR)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MODEL_DIR)


def helios(choice) -> dict:
    return choice.model_extra["helios"]


def ids_of(tokenizer, texts: list[str]) -> list[int]:
    """Token texts back to ids (each text must name one token of the vocabulary)."""
    by_text: dict[str, list[int]] = {}
    for token, text in enumerate(tokenizer.batch_decode([[i] for i in range(len(tokenizer))])):
        by_text.setdefault(text, []).append(token)
    assert all(len(by_text[text]) == 1 for text in texts), "ambiguous token text"
    return [by_text[text][0] for text in texts]


@torch.inference_mode()
def full_depth_logprobs(hf: HFModel, token_ids: list[int]) -> torch.Tensor:
    """[len - 1]: logprob of token i + 1 after tokens 0..i, from HF's own full forward."""
    logits = hf.model(torch.tensor([token_ids])).logits[0].float()
    return logits.log_softmax(-1)[:-1].gather(-1, torch.tensor(token_ids[1:])[:, None])[:, 0]


# --- completions ---------------------------------------------------------------------------
def test_completion_logprobs_are_the_exit_layers_distribution(client, hf, tokenizer):
    completion = client.completions.create(
        model=MODEL, prompt=STRUCTURED, max_tokens=8, temperature=0, logprobs=3, extra_body={"ignore_eos": True}
    )
    [choice] = completion.choices
    prompt_ids = tokenizer(STRUCTURED).input_ids
    distributions: list[torch.Tensor] = []
    tokens, exits = reference_generate(hf, prompt_ids, 8, THRESHOLD, EXIT_LAYERS, distributions=distributions)
    assert helios(choice)["exit_layers"] == exits
    assert min(exits) < NUM_LAYERS  # early exits: otherwise any layer's logprobs would pass

    logprobs = choice.logprobs
    assert logprobs.tokens == [tokenizer.decode([token]) for token in tokens]
    assert "".join(logprobs.tokens) == choice.text
    for token, reported, top, distribution in zip(
        tokens, logprobs.token_logprobs, logprobs.top_logprobs, distributions, strict=True
    ):
        assert reported <= 0
        assert reported == pytest.approx(float(distribution[token]), abs=TOLERANCE)
        values, ids = distribution.topk(3)
        expected = {tokenizer.decode([i]): v for i, v in zip(ids.tolist(), values.tolist(), strict=True)}
        assert top.keys() == expected.keys()  # the greedy token is one of its top 3
        assert list(top.values()) == pytest.approx(list(expected.values()), abs=TOLERANCE)
    offsets = logprobs.text_offset
    assert offsets == [len("".join(logprobs.tokens[:i])) for i in range(len(tokens))]

    # The same tokens scored at full depth (what a last-layer implementation reports) differ.
    full_depth = full_depth_logprobs(hf, prompt_ids + tokens)[len(prompt_ids) - 1 :]
    early = [i for i, layer in enumerate(exits) if layer < NUM_LAYERS]
    assert max(abs(logprobs.token_logprobs[i] - float(full_depth[i])) for i in early) > 1e-2


def test_sampled_tokens_report_the_raw_exit_distribution(client, hf, tokenizer):
    """Temperature draws the token; its logprob is of the untempered distribution (vLLM's default)."""
    temperature = 0.7
    completion = client.completions.create(
        model=MODEL, prompt=STRUCTURED, max_tokens=8, temperature=temperature, seed=3, logprobs=0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    [choice] = completion.choices
    tokens = ids_of(tokenizer, choice.logprobs.tokens)
    prompt_ids = tokenizer(STRUCTURED).input_ids
    distributions: list[torch.Tensor] = []
    _, exits = reference_generate(hf, prompt_ids, 8, THRESHOLD, EXIT_LAYERS, distributions=distributions, forced=tokens)
    assert helios(choice)["exit_layers"] == exits
    raw = [float(distribution[token]) for token, distribution in zip(tokens, distributions, strict=True)]
    assert choice.logprobs.token_logprobs == pytest.approx(raw, abs=TOLERANCE)
    # logprobs=0: no alternatives, only the token itself (as vLLM)
    assert [list(top) for top in choice.logprobs.top_logprobs] == [[text] for text in choice.logprobs.tokens]
    tempered = [
        float((distribution / temperature).log_softmax(-1)[token])
        for token, distribution in zip(tokens, distributions, strict=True)
    ]
    assert max(abs(a - b) for a, b in zip(raw, tempered, strict=True)) > 1e-2


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_scores_prompts_like_lm_eval_loglikelihood(client, hf, tokenizer, max_tokens):
    """lm-evaluation-harness ``local-completions``: a batch of context + continuation token lists,
    echo, logprobs 1, temperature 0, max_tokens 0 or 1; it sums ``token_logprobs[ctxlen:]`` (without
    the generated last one) and calls the continuation greedy if each is its top logprob."""
    pairs = [("count from 41 : 41 42 43", " 44 45"), ("The return statement", " leaves the function")]
    requests = []
    for context, continuation in pairs:
        context_ids = tokenizer(context).input_ids
        requests.append((context_ids + tokenizer(continuation, add_special_tokens=False).input_ids, len(context_ids)))
    completion = client.completions.create(
        model=MODEL, prompt=[ids for ids, _ in requests], echo=True, logprobs=1, max_tokens=max_tokens,
        temperature=0, seed=1234,
    )  # fmt: skip
    choices = sorted(completion.choices, key=lambda choice: choice.index)
    assert [choice.index for choice in choices] == [0, 1]
    for choice, (ids, context_len) in zip(choices, requests, strict=True):
        logprobs = choice.logprobs
        assert len(logprobs.token_logprobs) == len(ids) + max_tokens
        assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
        assert choice.text.startswith(tokenizer.decode(ids, skip_special_tokens=True))
        assert len(helios(choice)["exit_layers"]) == max_tokens  # prompt tokens have no exit layer
        reference = full_depth_logprobs(hf, ids)
        scored = slice(context_len, len(ids))
        assert logprobs.token_logprobs[1 : len(ids)] == pytest.approx(reference.tolist(), abs=TOLERANCE)
        continuation = float(reference[context_len - 1 :].sum())
        assert sum(logprobs.token_logprobs[scored]) == pytest.approx(continuation, abs=1e-3)
        is_greedy = all(
            logprob == max(top.values())
            for logprob, top in zip(logprobs.token_logprobs[scored], logprobs.top_logprobs[scored], strict=True)
        )
        logits = hf.model(torch.tensor([ids])).logits[0, context_len - 1 : -1]
        assert is_greedy == bool((logits.argmax(-1) == torch.tensor(ids[context_len:])).all())
    assert completion.usage.prompt_tokens == sum(len(ids) for ids, _ in requests)
    assert completion.usage.completion_tokens == max_tokens * len(requests)


def test_echo_of_a_text_prompt_and_a_stream(client, tokenizer):
    prompt = "letters : c d e"
    whole = client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=4, temperature=0)
    [choice] = whole.choices
    assert choice.text.startswith(prompt)
    num_prompt = len(tokenizer(prompt).input_ids)
    assert len(choice.logprobs.tokens) == num_prompt + whole.usage.completion_tokens
    assert choice.logprobs.text_offset[num_prompt] == len(prompt)  # generated text starts after the echo

    chunks = list(
        client.completions.create(
            model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=4, temperature=0, stream=True
        )
    )
    pieces = [chunk.choices[0] for chunk in chunks if chunk.choices]
    assert pieces[0].text == prompt  # the echo comes first, with the prompt's logprobs
    assert len(pieces[0].logprobs.tokens) == num_prompt
    assert "".join(piece.text for piece in pieces) == choice.text
    streamed = [piece.logprobs for piece in pieces if piece.logprobs is not None]
    for field in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [value for part in streamed for value in getattr(part, field)] == getattr(choice.logprobs, field)
    assert pieces[-1].finish_reason == "length"


# --- chat ----------------------------------------------------------------------------------
def test_chat_logprobs_with_and_without_streaming(client):
    messages = [{"role": "user", "content": STRUCTURED}]
    whole = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    [choice] = whole.choices
    content = choice.logprobs.content
    assert len(content) == whole.usage.completion_tokens == len(helios(choice)["exit_layers"])
    assert "".join(token.token for token in content) == choice.message.content
    for token in content:
        assert token.logprob <= 0 and token.bytes == list(token.token.encode())
        assert len(token.top_logprobs) == 2
        assert token.top_logprobs[0].logprob >= token.top_logprobs[1].logprob
        assert token.top_logprobs[0].token == token.token  # greedy: its own top choice
        assert token.top_logprobs[0].logprob == token.logprob

    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2, stream=True
    )
    streamed = [token for chunk in stream for part in chunk.choices if part.logprobs for token in part.logprobs.content]
    assert [(t.token, t.logprob, [top.token for top in t.top_logprobs]) for t in streamed] == [
        (t.token, t.logprob, [top.token for top in t.top_logprobs]) for t in content
    ]

    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3, temperature=0, logprobs=True)
    assert all(token.top_logprobs == [] for token in plain.choices[0].logprobs.content)


# --- n choices -----------------------------------------------------------------------------
def test_n_choices_completion_stream_and_chat(client, tokenizer):
    request = {"model": MODEL, "prompt": PROSE, "max_tokens": 6, "temperature": 1.0, "seed": 11, "n": 3}
    first = client.completions.create(**request, extra_body={"ignore_eos": True})
    assert sorted(choice.index for choice in first.choices) == [0, 1, 2]
    texts = [choice.text for choice in sorted(first.choices, key=lambda choice: choice.index)]
    assert len(set(texts)) > 1  # seed + j: the choices differ
    assert first.usage.prompt_tokens == len(tokenizer(PROSE).input_ids)  # once, not n times
    assert first.usage.completion_tokens == 18
    per_choice = [helios(choice)["exit_layers"] for choice in sorted(first.choices, key=lambda c: c.index)]
    assert [len(layers) for layers in per_choice] == [6, 6, 6]
    assert first.model_extra["helios"]["exit_layers"] == [layer for layers in per_choice for layer in layers]

    again = client.completions.create(**request, extra_body={"ignore_eos": True})
    assert [choice.text for choice in sorted(again.choices, key=lambda choice: choice.index)] == texts

    streamed, finished = ["", "", ""], {}
    for chunk in client.completions.create(**request, stream=True, extra_body={"ignore_eos": True}):
        for part in chunk.choices:
            streamed[part.index] += part.text
            if part.finish_reason is not None:
                finished[part.index] = part.finish_reason
    assert streamed == texts and finished == {0: "length", 1: "length", 2: "length"}

    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROSE}], max_tokens=4, temperature=1.0, seed=5, n=2
    )
    assert sorted(choice.index for choice in chat.choices) == [0, 1]
    assert chat.usage.completion_tokens == sum(len(helios(choice)["exit_layers"]) for choice in chat.choices)


def test_leaving_a_stream_of_several_choices_aborts_them_all(client, live):
    live.recorder.step_delay = 0.01  # far from done when the client leaves
    try:
        stream = client.completions.create(
            model=MODEL, prompt=PROSE, max_tokens=200, n=3, temperature=1.0, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        next(iter(stream))
        stream.close()
        deadline = time.monotonic() + 10
        while live.worker.runner.num_in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        live.recorder.step_delay = 0.0
    assert live.worker.runner.num_in_flight == 0
    assert [status for _, status, _ in live.recorder.done[-3:]] == ["abort"] * 3


# --- limits --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("endpoint", "fields", "param"),
    [
        ("completions", {"logprobs": 6}, "logprobs"),
        ("completions", {"n": 17}, "n"),
        ("completions", {"n": 2, "best_of": 3}, "best_of"),
        ("completions", {"max_tokens": 0}, "max_tokens"),
        ("chat", {"logprobs": True, "top_logprobs": 6}, "top_logprobs"),
        ("chat", {"top_logprobs": 2}, "top_logprobs"),
        ("chat", {"n": 17}, "n"),
    ],
)
def test_limits_are_400s_naming_the_parameter(client, endpoint, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        if endpoint == "completions":
            client.completions.create(model=MODEL, prompt=STRUCTURED, **fields)
        else:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], **fields)
    assert caught.value.param == param
