"""One local worker's /metrics -> the policy's ``Telemetry`` (counts since the previous scrape).

``read_counters`` is pure over the Prometheus text. A worker that has generated nothing yet
exposes no labelled token counter at all, so a missing counter reads as 0, not as an error;
only a missing ``helios_layers_loaded`` means the text is not a HELIOS worker's. A worker
started by this run begins at zero, so its first scrape's counts are all new (the baseline is
``WorkerCounters.zero()``), and a counter that went down means the worker restarted.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from helios_operator.policy import Telemetry

TOKENS = "helios_generated_tokens_total"
BREACHES = "helios_confidence_breaches_total"
REQUESTS = "helios_requests_total"
EXIT_BUCKET = "helios_exit_layer_bucket"
LAYERS_LOADED = "helios_layers_loaded"
LAYERS_TOTAL = "helios_layers_total"
LATENCY_SUM = "helios_request_latency_seconds_sum"
LATENCY_COUNT = "helios_request_latency_seconds_count"


class MetricsError(ValueError):
    """The text is not a HELIOS worker's metrics."""


@dataclass(frozen=True)
class WorkerCounters:
    """Cumulative counters of one worker; ``exit_buckets`` maps ``le`` (a layer) to a cumulative count."""

    layers: int
    layers_total: int | None
    tokens: float
    breaches: float
    requests: float
    exit_buckets: dict[float, float] = field(default_factory=dict)

    @classmethod
    def zero(cls, layers: int) -> WorkerCounters:
        return cls(layers=layers, layers_total=None, tokens=0.0, breaches=0.0, requests=0.0)


def read_counters(text: str) -> WorkerCounters:
    """The counters HELIOS needs from a worker's text exposition (summed over label values)."""
    sums: dict[str, float] = {}
    buckets: dict[float, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == EXIT_BUCKET and sample.labels.get("le") != "+Inf":
                    le = float(sample.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
                else:
                    sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    except (ValueError, KeyError) as error:
        raise MetricsError(f"unreadable metrics: {error}") from error
    if LAYERS_LOADED not in sums:
        raise MetricsError(f"metrics lack {LAYERS_LOADED}: not a HELIOS worker")
    return WorkerCounters(
        layers=int(sums[LAYERS_LOADED]),
        layers_total=int(sums[LAYERS_TOTAL]) if LAYERS_TOTAL in sums else None,
        tokens=sums.get(TOKENS, 0.0),
        breaches=sums.get(BREACHES, 0.0),
        requests=sums.get(REQUESTS, 0.0),
        exit_buckets=buckets,
    )


def _exits_per_layer(buckets: dict[float, float], layers: int) -> list[float] | None:
    """Cumulative buckets -> tokens that exited at layer 1..layers; None if a bucket is missing."""
    try:
        cumulative = [buckets[float(layer)] for layer in range(1, layers + 1)]
    except KeyError:
        return None
    return [cumulative[0], *(after - before for before, after in itertools.pairwise(cumulative))]


def telemetry_between(
    previous: WorkerCounters, current: WorkerCounters, model: str, observed_at: datetime
) -> Telemetry:
    """What happened between two scrapes of the worker serving candidate ``model``."""
    if current.tokens < previous.tokens:  # the worker restarted: everything it counted is new
        previous = WorkerCounters.zero(current.layers)
    tokens = round(current.tokens - previous.tokens)
    histogram: list[int] = []
    now_exits = _exits_per_layer(current.exit_buckets, current.layers)
    before_exits = (
        [0.0] * current.layers if not previous.exit_buckets else _exits_per_layer(previous.exit_buckets, current.layers)
    )
    if now_exits is not None and before_exits is not None:
        histogram = [max(0, round(a - b)) for a, b in zip(now_exits, before_exits, strict=True)]
        # Tokens that exited beyond L (a scrape that straddles a layer drop) leave the histogram
        # short of the token count; then it is unknown for this scrape rather than wrong.
        if sum(histogram) != tokens:
            histogram = []
    return Telemetry(
        observed_at=observed_at,
        model=model,
        layers=current.layers,
        num_new_tokens=tokens,
        num_new_breaches=min(tokens, max(0, round(current.breaches - previous.breaches))),
        num_new_requests=max(0, round(current.requests - previous.requests)),
        exit_histogram=histogram,
    )
