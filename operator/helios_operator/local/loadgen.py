"""An open-loop traffic generator for an OpenAI endpoint (``helios load``).

Open loop: requests are sent at Poisson arrival times whatever the server's speed, as real
users do, so a slow server builds a queue and shows it in the latency instead of slowing the
generator down (a closed loop would hide exactly that). Bounded twice: no request is sent
after ``duration`` seconds or beyond ``max_requests``, and each request has ``timeout``.
A shifting workload sends ``prompts`` first and ``shift_prompts`` from ``shift_at`` seconds on.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Sequence

import httpx
from pydantic import BaseModel, ConfigDict, Field


class LoadSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    rate: float = Field(gt=0, description="Mean requests per second.")
    prompts: list[str] = Field(min_length=1)
    duration: float = Field(default=30.0, gt=0)
    shift_prompts: list[str] | None = None
    shift_at: float | None = Field(default=None, ge=0)
    max_requests: int = Field(default=10_000, ge=1)
    max_tokens: int = Field(default=16, ge=1)
    timeout: float = Field(default=120.0, gt=0)
    model: str = "helios"
    stream: bool = False
    seed: int = 0


class RequestResult(BaseModel):
    prompt: str
    sent_at: float = Field(description="Seconds after the start.")
    latency: float
    is_ok: bool
    is_shifted: bool
    status: int | None = None
    num_tokens: int = 0
    served_by: str | None = None
    text: str | None = Field(default=None, description="The completion (non-streaming requests).")
    error: str | None = None


class PhaseStats(BaseModel):
    sent: int
    ok: int
    failed: int
    p50_latency_seconds: float | None
    p99_latency_seconds: float | None


class LoadReport(BaseModel):
    url: str
    rate: float
    duration_seconds: float = Field(description="From the first send to the last answer.")
    sent: int
    ok: int
    failed: int
    num_tokens: int
    tokens_per_second: float
    p50_latency_seconds: float | None
    p99_latency_seconds: float | None
    errors: dict[str, int] = Field(default_factory=dict)
    before_shift: PhaseStats | None = None
    after_shift: PhaseStats | None = None


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def arrival_times(rate: float, duration: float, max_requests: int, seed: int) -> list[float]:
    """Poisson arrivals in [0, duration), at most ``max_requests``."""
    rng = random.Random(seed)
    times, now = [], rng.expovariate(rate)
    while now < duration and len(times) < max_requests:
        times.append(now)
        now += rng.expovariate(rate)
    return times


def _phase(results: Sequence[RequestResult]) -> PhaseStats:
    latencies = [r.latency for r in results if r.is_ok]
    return PhaseStats(
        sent=len(results),
        ok=len(latencies),
        failed=len(results) - len(latencies),
        p50_latency_seconds=percentile(latencies, 0.5),
        p99_latency_seconds=percentile(latencies, 0.99),
    )


def summarize(settings: LoadSettings, results: Sequence[RequestResult], elapsed: float) -> LoadReport:
    overall = _phase(results)
    errors: dict[str, int] = {}
    for result in results:
        if not result.is_ok:
            key = result.error or f"HTTP {result.status}"
            errors[key] = errors.get(key, 0) + 1
    tokens = sum(r.num_tokens for r in results if r.is_ok)
    shifted = settings.shift_prompts is not None and settings.shift_at is not None
    return LoadReport(
        url=settings.url,
        rate=settings.rate,
        duration_seconds=elapsed,
        sent=overall.sent,
        ok=overall.ok,
        failed=overall.failed,
        num_tokens=tokens,
        tokens_per_second=tokens / elapsed if elapsed > 0 else 0.0,
        p50_latency_seconds=overall.p50_latency_seconds,
        p99_latency_seconds=overall.p99_latency_seconds,
        errors=errors,
        before_shift=_phase([r for r in results if not r.is_shifted]) if shifted else None,
        after_shift=_phase([r for r in results if r.is_shifted]) if shifted else None,
    )


async def _read_stream(response: httpx.Response) -> tuple[int, str | None]:
    """Completion chunks of an SSE stream; an error event raises ValueError."""
    tokens, served_by = 0, None
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return tokens, served_by
        event = json.loads(data)
        if "error" in event:
            raise ValueError(f"stream error: {event['error'].get('message', event['error'])}")
        served_by = event.get("model", served_by)
        tokens += sum(1 for choice in event.get("choices", []) if choice.get("text") or choice.get("delta"))
    raise ValueError("stream ended without [DONE]")


async def _one(
    client: httpx.AsyncClient, settings: LoadSettings, prompt: str, sent_at: float, is_shifted: bool
) -> RequestResult:
    body = {
        "model": settings.model,
        "prompt": prompt,
        "max_tokens": settings.max_tokens,
        "temperature": 0,
        "stream": settings.stream,
    }
    start = time.monotonic()
    status: int | None = None
    text: str | None = None
    try:
        if settings.stream:
            async with client.stream("POST", "/v1/completions", json=body) as response:
                status = response.status_code
                if status != 200:
                    await response.aread()
                    raise ValueError(f"HTTP {status}")
                tokens, served_by = await _read_stream(response)
        else:
            response = await client.post("/v1/completions", json=body)
            status = response.status_code
            if status != 200:
                raise ValueError(f"HTTP {status}")
            document = response.json()
            tokens = int(document.get("usage", {}).get("completion_tokens", 0))
            served_by = document.get("model")
            choices = document.get("choices") or [{}]
            text = choices[0].get("text")
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
        message = str(error) or type(error).__name__
        return RequestResult(
            prompt=prompt,
            sent_at=sent_at,
            latency=time.monotonic() - start,
            is_ok=False,
            is_shifted=is_shifted,
            status=status,
            error=message if message.startswith("HTTP") else f"{type(error).__name__}: {message}"[:200],
        )
    return RequestResult(
        prompt=prompt,
        sent_at=sent_at,
        latency=time.monotonic() - start,
        is_ok=True,
        is_shifted=is_shifted,
        status=status,
        num_tokens=tokens,
        served_by=served_by,
        text=text,
    )


async def run_load(settings: LoadSettings) -> tuple[LoadReport, list[RequestResult]]:
    """Send the workload; return the summary and every request's result, in send order."""
    times = arrival_times(settings.rate, settings.duration, settings.max_requests, settings.seed)
    limits = httpx.Limits(max_connections=max(64, len(times)), max_keepalive_connections=64)
    timeout = httpx.Timeout(settings.timeout, connect=10.0)
    counters = {False: 0, True: 0}
    async with httpx.AsyncClient(base_url=settings.url.rstrip("/"), timeout=timeout, limits=limits) as client:
        start = time.monotonic()
        tasks = []
        for at in times:
            delay = at - (time.monotonic() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            is_shifted = (
                settings.shift_prompts is not None and settings.shift_at is not None and at >= settings.shift_at
            )
            pool = settings.shift_prompts if is_shifted and settings.shift_prompts else settings.prompts
            prompt = pool[counters[is_shifted] % len(pool)]
            counters[is_shifted] += 1
            tasks.append(asyncio.create_task(_one(client, settings, prompt, at, is_shifted)))
        results = list(await asyncio.gather(*tasks))
        elapsed = time.monotonic() - start
    return summarize(settings, results, elapsed), results
