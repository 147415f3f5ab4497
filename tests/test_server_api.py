"""The worker's HTTP API against a real server in-process: OpenAI routes, errors, auth, probes, hooks."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from prometheus_client import Counter
from transformers import AutoTokenizer

from helios_worker.sampling import SamplingParams
from helios_worker.server.prompts import chat_prompt
from helios_worker.server.protocol import ChatCompletionRequest
from helios_worker.server.settings import ServerSettings
from helios_worker.server.state import load_engine
from tests.test_server_harness import live_server, sse_events, wait_ready

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def settings(tiny_model) -> ServerSettings:
    return ServerSettings(model=str(tiny_model("llama")), served_model_name="tiny", layers=2, record_prompts=8)


@pytest.fixture(scope="module")
def live(settings):
    with live_server(settings) as server:
        yield server


@pytest.fixture
def client(live):
    live.recorder.step_delay = 0.0
    with httpx.Client(base_url=live.base_url, timeout=30) as client:
        yield client


def complete(client: httpx.Client, **fields) -> dict:
    response = client.post("/v1/completions", json={"prompt": PROMPT, "temperature": 0, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def stream(client: httpx.Client, path: str, **fields) -> list:
    with client.stream("POST", path, json={"stream": True, "temperature": 0, **fields}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response.iter_lines()))


# --- OpenAI routes ----------------------------------------------------------------------------
def test_probes_and_models(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ready"
    models = client.get("/v1/models").json()
    assert [card["id"] for card in models["data"]] == ["tiny"]
    assert models["data"][0]["max_model_len"] == 256


def test_completion_equals_the_engine_and_reports_usage(client, settings):
    body = complete(client, max_tokens=12, ignore_eos=True)
    engine = load_engine(settings)
    prompt_ids = engine.loaded.tokenizer(PROMPT).input_ids
    [expected] = engine.generate([prompt_ids], SamplingParams(max_new_tokens=12, ignore_eos=True))
    choice = body["choices"][0]
    assert choice["text"] == engine.loaded.tokenizer.decode(expected.token_ids, skip_special_tokens=True)
    assert choice["finish_reason"] == "length"
    num_prompt = len(prompt_ids)
    assert body["usage"] == {"prompt_tokens": num_prompt, "completion_tokens": 12, "total_tokens": num_prompt + 12}
    assert body["helios"]["exit_layers"] == expected.exit_layers
    assert body["helios"]["layers_loaded"] == 2 and body["helios"]["layers_total"] == 4
    assert body["model"] == "tiny" and body["object"] == "text_completion"


def test_token_id_prompt_and_seeded_sampling_repeat(client):
    first = complete(client, prompt=[5, 6, 7, 8], max_tokens=8, temperature=0.9, seed=3, ignore_eos=True)
    second = complete(client, prompt=[5, 6, 7, 8], max_tokens=8, temperature=0.9, seed=3, ignore_eos=True)
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    assert first["usage"]["prompt_tokens"] == 4


def test_stream_carries_the_same_text_then_usage_then_done(client):
    whole = complete(client, max_tokens=10, ignore_eos=True)
    events = stream(client, "/v1/completions", prompt=PROMPT, max_tokens=10, ignore_eos=True)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == whole["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert chunks[-1]["helios"]["exit_layers"] == whole["helios"]["exit_layers"]


def test_stop_string_ends_the_text_before_it(client):
    text = complete(client, max_tokens=24, ignore_eos=True)["choices"][0]["text"]
    stop = text[6:9]
    expected = text[: text.index(stop)]
    body = complete(client, max_tokens=24, ignore_eos=True, stop=[stop])
    choice = body["choices"][0]
    assert {key: choice[key] for key in ("index", "text", "finish_reason", "logprobs")} == {
        "index": 0,
        "text": expected,
        "finish_reason": "stop",
        "logprobs": None,
    }
    assert choice["helios"]["exit_layers"] == body["helios"]["exit_layers"]
    events = stream(client, "/v1/completions", prompt=PROMPT, max_tokens=24, ignore_eos=True, stop=stop)
    assert "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"]) == expected


def test_chat_completion_plain_join_and_stream(client, live):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    body = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6, "temperature": 0})
    assert body.status_code == 200, body.text
    reply = body.json()
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["usage"]["completion_tokens"] == len(reply["helios"]["exit_layers"])
    events = stream(client, "/v1/chat/completions", messages=messages, max_tokens=6)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"]["content"] or "" for e in events[:-1] if e["choices"])
    assert text == reply["choices"][0]["message"]["content"]
    assert events[-2]["usage"] == reply["usage"]
    assert "system: be brief\nuser: hello\nassistant:" in client.get("/v1/helios/recent-prompts").json()["prompts"]


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    request = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    prepared = chat_prompt(request, tokenizer)
    assert tokenizer.decode(prepared.token_ids) == "<user>hi<assistant>"
    assert prepared.text == "user: hi\nassistant:"  # recorded template-free


# --- the one error path -----------------------------------------------------------------------
CASES = [
    # (body bytes or JSON, status, param)
    (b"{not json", 400, None),
    (b"\xff\xfe\xfd", 400, None),
    (b"[1, 2]", 400, None),
    ({"max_tokens": 4}, 400, "prompt"),
    ({"prompt": 12}, 400, "prompt"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ({"prompt": "x", "temperature": 3}, 400, "temperature"),
    ({"prompt": "x", "n": 17}, 400, "n"),
    ({"prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ({"prompt": "x", "best_of": 2}, 400, "best_of"),
    ({"prompt": [[1, 2], []]}, 400, "prompt"),
    ({"prompt": "x", "stop": [""]}, 400, "stop"),
    ({"prompt": [1, 10**6]}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": "fox " * 400}, 400, "prompt"),
    ({"prompt": "x", "max_tokens": 1000}, 400, "max_tokens"),
    ({"prompt": "x", "model": "other"}, 404, "model"),
]


@pytest.mark.parametrize(("body", "status", "param"), CASES)
def test_bad_requests_get_one_openai_error_body(client, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post("/v1/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"] and "Traceback" not in response.text


def test_chat_errors_name_the_message_field(client):
    response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": 5}]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content"
    response = client.post("/v1/chat/completions", json={"messages": []})
    assert response.json()["error"]["param"] == "messages"


def test_body_limits_and_unknown_routes(client, settings):
    too_big = b"x" * (settings.max_body_bytes + 1)
    response = client.post("/v1/completions", content=too_big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    chunked = client.post(
        "/v1/completions", content=iter([b"x" * 65536] * 20), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413
    assert client.get("/v1/nothing").json()["error"]["type"] == "not_found_error"
    assert client.delete("/v1/models").status_code == 405


def test_engine_failure_mid_stream_is_an_sse_error_event(client, live):
    engine = live.worker.runner.engine
    real_step, calls = engine.step, []

    def failing_step():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated device error")
        return real_step()

    engine.step = failing_step
    try:
        events = stream(client, "/v1/completions", prompt=PROMPT, max_tokens=20, ignore_eos=True)
    finally:
        del engine.step
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "server_error"
    assert "simulated" not in json.dumps(events)  # details go to the log, not the client
    assert complete(client, max_tokens=3)["choices"][0]["finish_reason"] in ("length", "stop")  # still serving


# --- cancellation -----------------------------------------------------------------------------
def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_client_disconnect_aborts_a_stream(client, live):
    live.recorder.step_delay = 0.01  # 200 tokens would take >= 2 s
    body = {"prompt": PROMPT, "max_tokens": 200, "ignore_eos": True, "stream": True, "temperature": 0}
    with client.stream("POST", "/v1/completions", json=body) as response:
        first = next(sse_events(response.iter_lines()))
    request_id = first["id"]
    status, tokens = wait_for(lambda: live.recorder.status_of(request_id))
    assert status == "abort" and tokens < 200
    assert wait_for(lambda: live.worker.runner.num_in_flight == 0)


def test_client_disconnect_aborts_a_plain_request(live):
    live.recorder.step_delay = 0.01
    done_before = len(live.recorder.done)
    body = {"prompt": PROMPT, "max_tokens": 200, "ignore_eos": True, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live.base_url}/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
    _, status, tokens = wait_for(lambda: live.recorder.done[done_before:] and live.recorder.done[-1])
    assert status == "abort" and tokens < 200
    live.recorder.step_delay = 0.0


# --- the worker's own API ---------------------------------------------------------------------
def test_layer_change_and_state(client, live):
    state = client.get("/v1/helios/state").json()
    assert (state["layers_loaded"], state["layers_total"], state["model"]) == (2, 4, "tiny")
    grown = client.post("/v1/helios/layers", json={"layers": 4}).json()
    assert grown["layers"] == 4 and grown["previous_layers"] == 2 and grown["bytes_read"] > 0
    assert grown["weight_bytes"] > state["weight_bytes"]
    assert complete(client, max_tokens=4)["helios"]["layers_loaded"] == 4
    bad = client.post("/v1/helios/layers", json={"layers": 5})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "layers"
    shrunk = client.post("/v1/helios/layers", json={"layers": 2}).json()
    assert shrunk["bytes_read"] == 0 and shrunk["weight_bytes"] == state["weight_bytes"]
    assert client.get("/v1/helios/state").json()["layers_loaded"] == 2
    assert live.recorder.layer_changes[-2:] == [(4, 4), (2, 4)]


def test_evaluation_hook_and_metrics_registry(client, live):
    assert client.get("/v1/helios/evaluation").status_code == 404
    live.app.state.evaluation_provider = lambda: {"status": "running", "completed": 0, "total": 1}
    try:
        assert client.get("/v1/helios/evaluation").json()["status"] == "running"
        live.app.state.evaluation_provider = lambda: [{"model": "a"}]  # passed through as given
        assert client.get("/v1/helios/evaluation").json() == [{"model": "a"}]
    finally:
        live.app.state.evaluation_provider = None
    Counter("helios_test_marker", "registered by a test", registry=live.app.state.registry).inc()
    assert "helios_test_marker_total 1.0" in client.get("/metrics").text


# --- servers with other settings --------------------------------------------------------------
def test_auth_guards_v1_only(settings):
    with live_server(settings.model_copy(update={"api_key": "s3cret", "record_prompts": 0})) as server:
        url = server.base_url
        missing = httpx.get(f"{url}/v1/models")
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert httpx.get(f"{url}/v1/models", headers=ok).status_code == 200
        # auth is checked before the body is even parsed
        assert httpx.post(f"{url}/v1/completions", content=b"{bad").status_code == 401
        for path in ("/health", "/ready", "/metrics"):
            assert httpx.get(f"{url}{path}").status_code == 200
        off = httpx.get(f"{url}/v1/helios/recent-prompts", headers=ok)
        assert off.status_code == 404 and "--record-prompts" in off.json()["error"]["message"]


def test_the_control_api_takes_the_control_token_not_the_api_key(settings):
    update = {"api_key": "user-key", "control_token": "operator-token", "record_prompts": 4}
    with live_server(settings.model_copy(update=update)) as server:
        url = server.base_url
        user, operator = {"Authorization": "Bearer user-key"}, {"Authorization": "Bearer operator-token"}
        assert httpx.get(f"{url}/v1/models", headers=user).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers=operator).status_code == 401  # the token is not a user key
        refused = httpx.get(f"{url}/v1/helios/recent-prompts", headers=user)
        assert refused.status_code == 401 and "control token" in refused.json()["error"]["message"]
        assert httpx.post(f"{url}/v1/helios/layers", json={"layers": 1}, headers=user).status_code == 401
        assert httpx.get(f"{url}/v1/helios/recent-prompts", headers=operator).status_code == 200
        assert httpx.get(f"{url}/v1/helios/state", headers=operator).status_code == 200
    with live_server(settings.model_copy(update={"control_token": "operator-token"})) as server:
        assert httpx.get(f"{server.base_url}/v1/models").status_code == 200  # no API key: the OpenAI API is open
        assert httpx.get(f"{server.base_url}/v1/helios/state").status_code == 401


def test_full_queue_is_429_with_retry_after(settings):
    with live_server(settings.model_copy(update={"max_batch_size": 1, "max_queue": 0})) as server:
        server.recorder.gate.clear()  # hold the engine after its first step
        body = {"prompt": PROMPT, "max_tokens": 5, "stream": True}
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            with client.stream("POST", "/v1/completions", json=body) as first:
                assert first.status_code == 200
                rejected = client.post("/v1/completions", json={"prompt": PROMPT})
                assert rejected.status_code == 429
                assert rejected.headers["retry-after"] == "1"
                assert rejected.json()["error"]["type"] == "rate_limit_error"
                server.recorder.gate.set()
                assert list(sse_events(first.iter_lines()))[-1] == "[DONE]"
            assert client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}).status_code == 200


def test_not_ready_while_loading_then_ready(settings):
    release = threading.Event()

    def slow_loader(s: ServerSettings):
        release.wait(30)
        return load_engine(s)

    with live_server(settings, ready=False, loader=slow_loader) as server:
        url = server.base_url
        assert httpx.get(f"{url}/health").status_code == 200
        not_ready = httpx.get(f"{url}/ready")
        assert not_ready.status_code == 503 and not_ready.json()["status"] == "loading"
        busy = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT})
        assert busy.status_code == 503 and busy.headers["retry-after"]
        release.set()
        wait_ready(url)
        server.worker.begin_drain()
        draining = httpx.get(f"{url}/ready")
        assert draining.status_code == 503 and draining.json()["status"] == "draining"
        assert httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT}).status_code == 503


def test_failed_load_is_reported_by_ready(tmp_path):
    with live_server(ServerSettings(model=str(tmp_path / "missing")), ready=False) as server:
        body = wait_for(lambda: (r := httpx.get(f"{server.base_url}/ready")).json()["status"] == "failed" and r)
        assert body.status_code == 503 and "not found" in body.json()["reason"]
