"""Concurrent clients share decode steps (continuous batching through the HTTP server)."""

from __future__ import annotations

import asyncio

import httpx

from helios_worker.server.settings import ServerSettings
from tests.test_server_harness import live_server

NUM_CLIENTS = 4
MAX_TOKENS = 24


async def stream_one(client: httpx.AsyncClient, index: int) -> tuple[str, int]:
    body = {
        "prompt": f"kubernetes operators {index}",
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "stream": True,
        "temperature": 0,
    }
    text, usage = "", None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                chunk = httpx.Response(200, content=line.removeprefix("data: ")).json()
                text += "".join(choice["text"] for choice in chunk["choices"])
                usage = chunk["usage"] or usage
    return text, usage["completion_tokens"]


async def run_clients(base_url: str) -> list[tuple[str, int]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        return await asyncio.gather(*(stream_one(client, i) for i in range(NUM_CLIENTS)))


def test_concurrent_streams_are_decoded_together(tiny_model):
    settings = ServerSettings(model=str(tiny_model("llama")), max_batch_size=8)
    with live_server(settings) as server:
        server.recorder.step_delay = 0.003  # a step takes long enough for every client to join
        results = asyncio.run(run_clients(server.base_url))
        steps = list(server.recorder.steps)
    assert [tokens for _, tokens in results] == [MAX_TOKENS] * NUM_CLIENTS
    assert max(step.num_decodes for step in steps) > 1, "no decode step ever batched two requests"
    # Every token was produced in a step: fewer steps than tokens means steps were shared.
    assert len(steps) < NUM_CLIENTS * MAX_TOKENS
