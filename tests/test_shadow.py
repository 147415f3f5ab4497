"""The shadow accuracy check: worker sampling and scoring, and ``helios run``'s round trip.

The policy's side (agreement under the floor -> add layers) is tested in
tests/test_policy_adapt.py (``test_shadow_agreement_below_the_floor_adds_layers``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from helios_operator.local.shadow import ShadowCheck, ShadowFailed, ShadowScore, shadow_round
from helios_operator.local.supervisor import WorkerSettings
from helios_operator.local.telemetry import read_counters
from helios_worker.server.settings import ServerSettings
from tests.test_server_harness import live_server

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def model_path(tiny_model):
    return tiny_model("llama")  # 4 layers


def full_depth_matches(model_path, prompt_ids: list[int], served: list[int]) -> int:
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + served])).logits[0]
    choices = logits[len(prompt_ids) - 1 : len(prompt_ids) + len(served) - 1].argmax(-1).tolist()
    return sum(int(a == b) for a, b in zip(choices, served, strict=True))


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_sample_score_and_record_on_real_workers(model_path):
    serving = ServerSettings(model=str(model_path), served_model_name="tiny", layers=2, shadow_fraction=1.0)
    scoring = ServerSettings(model=str(model_path), served_model_name="tiny")
    with live_server(serving) as server, live_server(scoring) as scorer, httpx.Client(timeout=60) as client:
        sampled = client.post(f"{server.base_url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 8})
        assert sampled.status_code == 200  # temperature 1 by default: not kept
        reply = client.post(
            f"{server.base_url}/v1/completions",
            json={"prompt": PROMPT, "temperature": 0, "max_tokens": 8, "ignore_eos": True},
        ).json()
        samples = client.get(f"{server.base_url}/v1/helios/shadow-samples").json()["samples"]
        assert len(samples) == 1
        assert len(samples[0]["token_ids"]) == reply["usage"]["completion_tokens"] == 8
        assert client.get(f"{server.base_url}/v1/helios/shadow-samples").json() == {"samples": []}  # drained

        score = client.post(f"{scorer.base_url}/v1/helios/shadow-score", json={"samples": samples}).json()
        expected = full_depth_matches(model_path, samples[0]["prompt_token_ids"], samples[0]["token_ids"])
        assert score == {"tokens": 8, "matches": expected}

        truncated = client.post(f"{server.base_url}/v1/helios/shadow-score", json={"samples": samples})
        assert truncated.status_code == 409
        assert truncated.json()["error"]["code"] == "not_full_depth"
        assert "all 4 layers" in truncated.json()["error"]["message"]

        assert client.post(f"{server.base_url}/v1/helios/shadow-result", json=score).status_code == 200
        assert client.post(f"{server.base_url}/v1/helios/shadow-result", json={"tokens": 2, "matches": 2}).is_success
        text = client.get(f"{server.base_url}/metrics").text
        assert metric(text, "helios_shadow_tokens_total") == 10
        assert metric(text, "helios_shadow_matches_total") == expected + 2
        assert metric(text, "helios_shadow_agreement") == pytest.approx((expected + 2) / 10)
        counters = read_counters(text)  # what the operator and helios run scrape
        assert (counters.shadow_tokens, counters.shadow_matches) == (10, expected + 2)

        bad = client.post(f"{server.base_url}/v1/helios/shadow-result", json={"tokens": 1, "matches": 2})
        assert bad.status_code == 400
        off = client.get(f"{scorer.base_url}/v1/helios/shadow-samples")
        assert off.status_code == 404
        assert "--shadow-fraction" in off.json()["error"]["message"]


# --- helios run's round trip against fake workers -----------------------------------------------
@dataclass
class FakeWorkers:
    """Two fake workers on one in-process transport: ``serving`` with samples, ``scorer``."""

    samples: list[dict]
    recorded: list[dict] = field(default_factory=list)
    scored: list[list[dict]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        if host == "serving" and path == "/v1/helios/shadow-samples":
            samples, self.samples = self.samples, []
            return httpx.Response(200, json={"samples": samples})
        if host == "scorer" and path == "/v1/helios/shadow-score":
            samples = json.loads(request.content)["samples"]
            self.scored.append(samples)
            tokens = sum(len(s["token_ids"]) for s in samples)
            return httpx.Response(200, json={"tokens": tokens, "matches": tokens - 1})
        if host == "serving" and path == "/v1/helios/shadow-result":
            self.recorded.append(json.loads(request.content))
            return httpx.Response(200, json=self.recorded[-1])
        return httpx.Response(409, json={"error": {"message": "not full depth"}})


SAMPLE = {"prompt_token_ids": [1, 2], "token_ids": [3, 4, 5]}


def test_round_trip_moves_samples_to_the_scorer_and_the_score_back():
    fakes = FakeWorkers(samples=[SAMPLE, SAMPLE])

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.MockTransport(fakes.handle)) as client:
            first = await shadow_round(client, "http://serving", "http://scorer")
            second = await shadow_round(client, "http://serving", "http://scorer")  # nothing new
            fakes.samples = [SAMPLE]
            with pytest.raises(ShadowFailed, match="409"):
                await shadow_round(client, "http://serving", "http://serving")  # a truncated scorer
            return first, second

    first, second = asyncio.run(scenario())
    assert first == ShadowScore(num_tokens=6, num_matches=5)
    assert second is None
    assert fakes.scored == [[SAMPLE, SAMPLE]]
    assert fakes.recorded == [{"tokens": 6, "matches": 5}]


@dataclass
class FakeWorker:
    url: str
    settings: WorkerSettings
    pid: int = 1
    is_running: bool = True
    returncode: int | None = None

    def log_tail(self) -> str:
        return ""


@dataclass
class FakeStarter:
    started: list[WorkerSettings] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)

    async def start(self, settings: WorkerSettings) -> FakeWorker:
        self.started.append(settings)
        return FakeWorker(url="http://scorer", settings=settings)

    async def stop(self, worker: FakeWorker) -> int | None:
        self.stopped.append(worker.settings.model)
        return 0


def test_shadow_check_starts_the_scorer_in_the_background_and_replaces_it_on_a_switch():
    fakes, starter, said = FakeWorkers(samples=[SAMPLE]), FakeStarter(), []
    serving = FakeWorker(url="http://serving", settings=WorkerSettings("alpha", "a", 2, 0.8))
    alpha, beta = WorkerSettings("alpha", "a", 4, 0.8, 0), WorkerSettings("beta", "b", 6, 0.8, 0)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.MockTransport(fakes.handle)) as client:
            check = ShadowCheck(starter, client, said.append)
            scores = [await check.step(serving, alpha)]  # scorer starting: no round yet
            await asyncio.sleep(0)
            scores.append(await check.step(serving, alpha))
            fakes.samples = [SAMPLE]
            scores.append(await check.step(serving, beta))  # model switched: new scorer
            await asyncio.sleep(0)
            scores.append(await check.step(serving, beta))
            await check.stop()
            return scores

    scores = asyncio.run(scenario())
    assert scores == [None, ShadowScore(3, 2), None, ShadowScore(3, 2)]
    assert starter.started == [alpha, beta]
    assert starter.stopped == ["alpha", "beta"]
    assert any("shadow scorer beta with all 6 layers" in message for message in said)
