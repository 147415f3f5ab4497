"""Worker metrics -> the policy's ``Telemetry``.

``parse_metrics`` reads one worker's Prometheus text into cumulative counters (pure);
``aggregate`` turns two rounds of samples into the counts since the previous scrape, summed
over the workers (pure); ``scrape_all`` reads every worker concurrently, each request with
its own timeout, so one slow or dead pod costs at most that timeout and never the loop.

A pod seen for the first time is only a baseline (its lifetime counts are not "new"), and a
counter that went down means the worker restarted: its current value is the delta.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families

from helios_operator.policy import Telemetry

TOKENS = "helios_generated_tokens_total"
BREACHES = "helios_confidence_breaches_total"
REQUESTS = "helios_requests_total"
EXIT_BUCKET = "helios_exit_layer_bucket"
LAYERS_LOADED = "helios_layers_loaded"
LAYERS_TOTAL = "helios_layers_total"
SHADOW_TOKENS = "helios_shadow_tokens_total"
SHADOW_MATCHES = "helios_shadow_matches_total"


class MetricsError(ValueError):
    """A worker's /metrics lacks what HELIOS needs."""


@dataclass(frozen=True)
class WorkerSample:
    """One worker's cumulative counters at ``observed_at``."""

    observed_at: datetime
    model: str
    layers: int
    layers_total: int | None
    tokens: float
    breaches: float
    requests: float
    exit_buckets: Mapping[float, float] = field(default_factory=dict)  # le -> cumulative count
    shadow_tokens: float = 0.0
    shadow_matches: float = 0.0


def parse_metrics(text: str, observed_at: datetime) -> WorkerSample:
    """Read the counters HELIOS uses from a worker's Prometheus text exposition."""
    sums: dict[str, float] = {}
    models: set[str] = set()
    buckets: dict[float, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == EXIT_BUCKET:
                    buckets[float(sample.labels["le"])] = buckets.get(float(sample.labels["le"]), 0) + sample.value
                    continue
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
                if sample.name == TOKENS and "model" in sample.labels:
                    models.add(sample.labels["model"])
    except (ValueError, KeyError) as error:
        raise MetricsError(f"unreadable metrics: {error}") from error
    missing = [name for name in (TOKENS, BREACHES, LAYERS_LOADED) if name not in sums]
    if missing:
        raise MetricsError(f"metrics lack {', '.join(missing)}")
    if len(models) != 1:
        raise MetricsError(f"expected one model label on {TOKENS}, got {sorted(models) or 'none'}")
    return WorkerSample(
        observed_at=observed_at,
        model=models.pop(),
        layers=int(sums[LAYERS_LOADED]),
        layers_total=int(sums[LAYERS_TOTAL]) if LAYERS_TOTAL in sums else None,
        tokens=sums[TOKENS],
        breaches=sums[BREACHES],
        requests=sums.get(REQUESTS, 0.0),
        exit_buckets=buckets,
        shadow_tokens=sums.get(SHADOW_TOKENS, 0.0),
        shadow_matches=sums.get(SHADOW_MATCHES, 0.0),
    )


def _delta(current: float, previous: float) -> float:
    return current - previous if current >= previous else current  # a reset counter restarted at 0


def _per_layer(buckets: Mapping[float, float], layers: int) -> list[float] | None:
    """Cumulative ``le`` buckets -> tokens that exited at each layer 1..layers, or None."""
    try:
        cumulative = [buckets[float(layer)] for layer in range(1, layers + 1)]
    except KeyError:
        return None
    return [cumulative[0], *(b - a for a, b in itertools.pairwise(cumulative))]


@dataclass
class _Totals:
    tokens: float = 0.0
    breaches: float = 0.0
    requests: float = 0.0
    shadow_tokens: float = 0.0
    shadow_matches: float = 0.0
    histogram: list[float] | None = None
    seconds: float = 0.0


def _add(totals: _Totals, sample: WorkerSample, previous: WorkerSample) -> None:
    reset = sample.tokens < previous.tokens
    base = WorkerSample(sample.observed_at, sample.model, sample.layers, None, 0, 0, 0) if reset else previous
    totals.tokens += _delta(sample.tokens, base.tokens)
    totals.breaches += _delta(sample.breaches, base.breaches)
    totals.requests += _delta(sample.requests, base.requests)
    totals.shadow_tokens += _delta(sample.shadow_tokens, base.shadow_tokens)
    totals.shadow_matches += _delta(sample.shadow_matches, base.shadow_matches)
    totals.seconds = max(totals.seconds, (sample.observed_at - previous.observed_at).total_seconds())
    now_layers = _per_layer(sample.exit_buckets, sample.layers)
    before = [0.0] * sample.layers if reset else _per_layer(base.exit_buckets, sample.layers)
    if totals.histogram is not None and now_layers is not None and before is not None:
        totals.histogram = [t + a - b for t, a, b in zip(totals.histogram, now_layers, before, strict=True)]
    else:
        totals.histogram = None


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
        settings.setdefault((model_names.get(sample.model, sample.model), sample.layers), []).append(pod)
    (model, layers), pods = max(settings.items(), key=lambda item: (len(item[1]), item[0]))
    totals = _Totals(histogram=[0.0] * layers)
    for pod in pods:
        if pod in previous:
            _add(totals, current[pod], previous[pod])
    histogram = [round(max(n, 0.0)) for n in totals.histogram] if totals.histogram is not None else []
    tokens = round(totals.tokens)
    if sum(histogram) != tokens:
        histogram = []  # the histogram and the token counter disagree (e.g. prefill counted): unknown
    telemetry = Telemetry(
        observed_at=now,
        model=model,
        layers=layers,
        num_new_tokens=tokens,
        num_new_breaches=min(round(totals.breaches), tokens),
        num_new_requests=round(totals.requests),
        exit_histogram=histogram,
        num_shadow_tokens=round(totals.shadow_tokens),
        num_shadow_matches=min(round(totals.shadow_matches), round(totals.shadow_tokens)),
    )
    rate = totals.tokens / totals.seconds if totals.seconds > 0 else 0.0
    return Aggregate(telemetry, rate, len(current))


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
