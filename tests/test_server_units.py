"""Pure parts of the server: settings sources, text streaming with stop strings, prompt checks."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from helios_worker.server.errors import APIError, param_from_location
from helios_worker.server.prompts import (
    MIN_TEMPERATURE,
    chat_prompt,
    plain_chat_text,
    sampling_params,
)
from helios_worker.server.protocol import ChatCompletionRequest, CompletionRequest
from helios_worker.server.recent_prompts import RecentPrompts
from helios_worker.server.settings import ServerSettings, SettingsError
from helios_worker.server.text import TextStream


# --- settings -------------------------------------------------------------------------------
def test_flags_override_environment_which_overrides_defaults():
    env = {"HELIOS_MODEL": "env-model", "HELIOS_LAYERS": "3", "HELIOS_EXIT_THRESHOLD": "0.5", "HELIOS_PORT": "9000"}
    settings = ServerSettings.from_sources({"layers": "5", "port": None}, env)
    assert (settings.model, settings.layers, settings.exit_threshold, settings.port) == ("env-model", 5, 0.5, 9000)
    assert settings.max_batch_size == 16  # default


def test_operator_env_names_and_revision():
    env = {"HELIOS_MODEL": "org/m", "HELIOS_MODEL_NAME": "cand-a", "HELIOS_MODEL_REVISION": "abc", "HELIOS_API_KEY": ""}
    settings = ServerSettings.from_sources({}, env)
    assert settings.model_name == "cand-a"
    assert settings.model_ref == "org/m@abc"
    assert settings.api_key is None  # an empty key must not enable auth with an empty secret


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ({"model": "m", "exit_threshold": "2"}, {}, "--exit-threshold"),
        ({"model": "m"}, {"HELIOS_MAX_BATCH_SIZE": "lots"}, "HELIOS_MAX_BATCH_SIZE"),
        ({}, {}, "--model / HELIOS_MODEL"),
        ({"model": "m", "log_level": "loud"}, {}, "--log-level"),
    ],
)
def test_bad_setting_names_where_it_came_from(flags, env, expected):
    with pytest.raises(SettingsError) as caught:
        ServerSettings.from_sources(flags, env)
    message = str(caught.value)
    assert message.startswith(expected)
    assert "\n" not in message


# --- text streaming ---------------------------------------------------------------------------
class CharTokenizer:
    """One token per character (ids are code points): makes stop-string boundaries explicit."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def stream_text(text: str, stops: list[str]) -> tuple[list[str], TextStream]:
    stream = TextStream(CharTokenizer(), stops)
    deltas = [stream.add([ord(c)]) for c in text]
    if not stream.is_stopped:
        deltas.append(stream.finish())
    return deltas, stream


def test_stop_string_is_cut_and_never_sent():
    deltas, stream = stream_text("hello END world", ["END"])
    assert "".join(deltas) == "hello "
    assert stream.is_stopped
    assert all("E" not in delta for delta in deltas)


def test_possible_stop_prefix_is_held_back_then_released():
    deltas, stream = stream_text("a EN b", ["END"])
    assert deltas[2:4] == ["", ""]  # "E", "N" could start "END"
    assert "".join(deltas) == "a EN b"
    assert not stream.is_stopped


def test_earliest_of_several_stop_strings_wins():
    deltas, _ = stream_text("xx##yy!!", ["!!", "##"])
    assert "".join(deltas) == "xx"


def test_incomplete_utf8_is_held_until_complete():
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_tokenizer(), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    ids = tokenizer("é€", add_special_tokens=False).input_ids
    assert len(ids) > 2  # one token per byte
    stream = TextStream(tokenizer)
    deltas = [stream.add([i]) for i in ids] + [stream.finish()]
    assert "".join(deltas) == "é€"
    assert all("\ufffd" not in delta for delta in deltas)


def _byte_tokenizer() -> Tokenizer:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {char: i + 3 for i, char in enumerate(sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


# --- prompt checks ----------------------------------------------------------------------------
def completion(**fields) -> CompletionRequest:
    return CompletionRequest.model_validate({"prompt": "x", **fields})


def test_context_overflow_names_prompt_or_max_tokens():
    with pytest.raises(APIError) as caught:
        sampling_params(completion(), num_prompt_tokens=64, max_seq_len=64)
    assert (caught.value.status_code, caught.value.param) == (400, "prompt")
    with pytest.raises(APIError) as caught:
        sampling_params(completion(max_tokens=10), num_prompt_tokens=60, max_seq_len=64)
    assert caught.value.param == "max_tokens"
    chat = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 10}
    )
    with pytest.raises(APIError) as caught:
        sampling_params(chat, num_prompt_tokens=60, max_seq_len=64)
    assert caught.value.param == "max_completion_tokens"


def test_default_budgets_and_temperature_floor():
    assert sampling_params(completion(), 10, 64).max_new_tokens == 16
    assert sampling_params(completion(), 60, 64).max_new_tokens == 4
    chat = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}]})
    assert sampling_params(chat, 10, 64).max_new_tokens == 54  # the rest of the context
    assert sampling_params(completion(temperature=1e-30), 10, 64).temperature == MIN_TEMPERATURE
    assert sampling_params(completion(temperature=0), 10, 64).is_greedy


def test_plain_chat_join_without_a_template():
    parts = [{"type": "text", "text": "hi"}]
    request = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": parts}]}
    )
    assert plain_chat_text(request.messages) == "system: be brief\nuser: hi\nassistant:"

    class NoTemplate:
        chat_template = None

        def __call__(self, text):
            return type("Encoded", (), {"input_ids": [ord(c) for c in text]})()

    prepared = chat_prompt(request, NoTemplate())
    assert prepared.text == "system: be brief\nuser: hi\nassistant:"
    assert prepared.token_ids == [ord(c) for c in prepared.text]


def test_validation_locations_become_openai_params():
    assert param_from_location(("body", "messages", 0, "content", "list[TextPart]", 0, "text")) == (
        "messages[0].content[0].text"
    )
    assert param_from_location(("body", "prompt", "str")) == "prompt"
    assert param_from_location(("body",)) is None


def test_recent_prompts_keep_the_last_n():
    recent = RecentPrompts(2)
    for prompt in ("a", " ", "b", "c"):
        recent.record(prompt)
    assert recent.snapshot() == ["b", "c"]
