"""Worker metrics -> the policy's ``Telemetry``.

``parse_metrics`` reads one worker's Prometheus text into a ``WorkerSample`` (pure, through
``helios_operator.worker_metrics``); ``aggregate`` turns two rounds of samples into the counts
since the previous scrape, summed over the workers (pure); ``scrape_all`` reads every worker
concurrently, each request with its own timeout, so one slow or dead pod costs at most that
timeout and never the loop.

A pod seen for the first time is only a baseline (its lifetime counts are not "new"), and a
counter that went down means the worker restarted: its current value is the delta.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import httpx

from helios_operator.policy import Telemetry
from helios_operator.worker_metrics import (
    Counts,
    MetricsError,
    WorkerCounters,
    counts_between,
    read_counters,
    telemetry_from,
)


@dataclass(frozen=True)
class WorkerSample:
    """One worker's cumulative counters at ``observed_at``, and the model they are counted for."""

    observed_at: datetime
    model: str
    counters: WorkerCounters


def parse_metrics(text: str, observed_at: datetime) -> WorkerSample:
    """Read a worker's Prometheus text; pods are grouped by model, so the text must name one."""
    counters = read_counters(text)
    if counters.model is None:
        raise MetricsError("metrics name no single model (helios_model_info or a model label)")
    return WorkerSample(observed_at, counters.model, counters)


@dataclass(frozen=True)
class Aggregate:
    """The scrape as the policy sees it, plus what the status shows."""

    telemetry: Telemetry | None
    tokens_per_second: float
    num_scraped: int


def aggregate(
    previous: Mapping[str, WorkerSample],
    current: Mapping[str, WorkerSample],
    model_names: Mapping[str, str],
    now: datetime,
) -> Aggregate:
    """Counts since the previous scrape, summed over pods serving the most common setting.

    ``model_names`` maps the ``model`` label (candidate name or model reference) to the candidate
    name. Pods still on another setting (mid-switch) are left out; if they are the majority the
    telemetry reports their setting, and the policy holds until the switch is done.
    """
    if not current:
        return Aggregate(None, 0.0, 0)
    settings: dict[tuple[str, int], list[str]] = {}
    for pod, sample in current.items():
        settings.setdefault((model_names.get(sample.model, sample.model), sample.counters.layers), []).append(pod)
    (model, layers), pods = max(settings.items(), key=lambda item: (len(item[1]), item[0]))
    seen = [pod for pod in pods if pod in previous]
    counts = sum(
        (counts_between(previous[pod].counters, current[pod].counters) for pod in seen),
        Counts(exits=[0.0] * layers),
    )
    seconds = max(((current[pod].observed_at - previous[pod].observed_at).total_seconds() for pod in seen), default=0.0)
    rate = counts.tokens / seconds if seconds > 0 else 0.0
    return Aggregate(telemetry_from(counts, model, layers, now), rate, len(current))


async def scrape_all(
    client: httpx.AsyncClient, endpoints: Mapping[str, str], now: datetime
) -> dict[str, WorkerSample | Exception]:
    """GET <endpoint>/metrics of every pod at once; a failure is returned, not raised."""

    async def one(endpoint: str) -> WorkerSample:
        response = await client.get(f"{endpoint}/metrics")
        response.raise_for_status()
        return parse_metrics(response.text, now)

    results = await asyncio.gather(*(one(url) for url in endpoints.values()), return_exceptions=True)
    return {
        pod: result if isinstance(result, WorkerSample | Exception) else RuntimeError(str(result))
        for pod, result in zip(endpoints, results, strict=True)
    }
