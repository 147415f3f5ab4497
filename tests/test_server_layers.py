"""In-place layer changes while a stream is running, checked token by token against the Engine.

The server applies ``POST /v1/helios/layers`` between two engine steps and tells each request
(``helios.layer_changes``) after how many of its tokens the change took effect. A reference
Engine built the same way, with the same resize at the same token, must produce the same
tokens and exit layers (greedy, tiny random model: fully deterministic).
"""

from __future__ import annotations

import httpx
import pytest

from helios_worker.loading import resize_layers
from helios_worker.sampling import SamplingParams
from helios_worker.server.settings import ServerSettings
from helios_worker.server.state import load_engine
from tests.test_server_harness import live_server, sse_events

PROMPT_IDS = [1, 40, 41, 42, 43, 44]
MAX_TOKENS = 48


def reference_run(settings: ServerSettings, at_token: int, layers: int) -> tuple[list[int], list[int]]:
    engine = load_engine(settings)
    engine.add_request(PROMPT_IDS, SamplingParams(max_new_tokens=MAX_TOKENS, ignore_eos=True))
    output = engine.waiting[-1].output
    while len(output.token_ids) < at_token:
        engine.step()
    if layers > engine.loaded.num_layers_loaded:  # the runner's order: grow reads then fills KV
        resize_layers(engine.loaded, layers)
        engine.set_active_layers(layers)
    else:  # shrink stops using the top layers, then frees them
        engine.set_active_layers(layers)
        resize_layers(engine.loaded, layers)
    while engine.has_unfinished():
        engine.step()
    return output.token_ids, output.exit_layers


@pytest.mark.parametrize(("start", "target"), [(2, 4), (4, 1)], ids=["grow", "shrink"])
def test_stream_across_a_layer_change_matches_the_engine(tiny_model, start, target):
    settings = ServerSettings(model=str(tiny_model("llama")), layers=start)
    with live_server(settings) as server:
        server.recorder.step_delay = 0.02  # keeps the stream running while the change is sent
        body = {"prompt": PROMPT_IDS, "max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": True, "temperature": 0}
        with (
            httpx.Client(base_url=server.base_url, timeout=60) as client,
            client.stream("POST", "/v1/completions", json=body) as response,
        ):
            events = sse_events(response.iter_lines())
            received = [next(events) for _ in range(3)]
            change = client.post("/v1/helios/layers", json={"layers": target})
            assert change.status_code == 200, change.text
            assert change.json()["previous_layers"] == start
            received += list(events)
    assert received[-1] == "[DONE]"
    final = received[-2]
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == MAX_TOKENS
    [mark] = final["helios"]["layer_changes"]
    assert mark["layers"] == target and 0 < mark["at_token"] < MAX_TOKENS

    token_ids, exit_layers = reference_run(settings, mark["at_token"], target)
    tokenizer = server.app.state.worker.runner.loaded.tokenizer
    streamed = "".join(event["choices"][0]["text"] for event in received[:-2] if event["choices"])
    assert streamed == tokenizer.decode(token_ids, skip_special_tokens=True)
    assert final["helios"]["exit_layers"] == exit_layers
    after = exit_layers[mark["at_token"] :]
    assert max(after) <= target and max(exit_layers[: mark["at_token"]]) <= start
    assert final["helios"]["layers_loaded"] == target
