"""A HELIOS worker's ``/metrics`` text -> cumulative counters -> counts between two scrapes.

The one reader of the worker's metrics contract (``helios_worker.metrics``), shared by the
Kubernetes operator and ``helios run``; each keeps its own baseline policy. Pure: no I/O.

A worker that has served nothing yet exposes no children of its labelled counters, so a
missing counter reads as 0; only a missing ``helios_layers_loaded`` means the text is not a
HELIOS worker's. ``helios_model_info`` names the model from the start; failing that, the
``model`` label of the ``helios_`` samples does. A counter that went down means the worker
restarted, so everything it counted since is new.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from helios_contracts.metric_names import (
    BREACHES,
    EXIT_BUCKET,
    LAYERS_LOADED,
    LAYERS_TOTAL,
    MODEL_INFO,
    REQUESTS,
    SHADOW_MATCHES,
    SHADOW_TOKENS,
    TOKENS,
)
from helios_operator.policy import Telemetry


class MetricsError(ValueError):
    """The text is not a HELIOS worker's metrics."""


@dataclass(frozen=True)
class WorkerCounters:
    """Cumulative counters of one worker, summed over label values.

    ``exit_buckets`` maps ``le`` (a layer) to a cumulative count; ``model`` is None when the
    text does not name exactly one model.
    """

    layers: int
    layers_total: int | None = None
    model: str | None = None
    tokens: float = 0.0
    breaches: float = 0.0
    requests: float = 0.0
    exit_buckets: Mapping[float, float] = field(default_factory=dict)
    shadow_tokens: float = 0.0
    shadow_matches: float = 0.0

    @classmethod
    def zero(cls, layers: int) -> WorkerCounters:
        """A worker with ``layers`` loaded that has counted nothing."""
        return cls(layers=layers)


def read_counters(text: str) -> WorkerCounters:
    """The counters HELIOS needs from a worker's Prometheus text exposition."""
    sums: dict[str, float] = {}
    buckets: dict[float, float] = {}
    info_models: set[str] = set()
    labelled_models: set[str] = set()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == MODEL_INFO:
                    info_models.add(sample.labels["model"])
                elif sample.name.startswith("helios_") and "model" in sample.labels:
                    labelled_models.add(sample.labels["model"])
                if sample.name == EXIT_BUCKET:
                    if sample.labels["le"] != "+Inf":
                        le = float(sample.labels["le"])
                        buckets[le] = buckets.get(le, 0.0) + sample.value
                else:
                    sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    except (ValueError, KeyError) as error:
        raise MetricsError(f"unreadable metrics: {error}") from error
    if LAYERS_LOADED not in sums:
        raise MetricsError(f"metrics lack {LAYERS_LOADED}: not a HELIOS worker")
    models = info_models or labelled_models
    return WorkerCounters(
        layers=int(sums[LAYERS_LOADED]),
        layers_total=int(sums[LAYERS_TOTAL]) if LAYERS_TOTAL in sums else None,
        model=next(iter(models)) if len(models) == 1 else None,
        tokens=sums.get(TOKENS, 0.0),
        breaches=sums.get(BREACHES, 0.0),
        requests=sums.get(REQUESTS, 0.0),
        exit_buckets=buckets,
        shadow_tokens=sums.get(SHADOW_TOKENS, 0.0),
        shadow_matches=sums.get(SHADOW_MATCHES, 0.0),
    )


def exits_per_layer(buckets: Mapping[float, float], layers: int) -> list[float] | None:
    """Cumulative ``le`` buckets -> tokens that exited at layer 1..layers; None if a bucket is missing."""
    try:
        cumulative = [buckets[float(layer)] for layer in range(1, layers + 1)]
    except KeyError:
        return None
    return [cumulative[0], *(after - before for before, after in itertools.pairwise(cumulative))]


def counter_delta(current: float, previous: float) -> float:
    """How much a counter grew; one that went down was reset to 0, so all of it is new."""
    return current - previous if current >= previous else current


@dataclass(frozen=True)
class Counts:
    """What workers counted between two scrapes; ``exits`` is per layer 1..L, None if unknown."""

    tokens: float = 0.0
    breaches: float = 0.0
    requests: float = 0.0
    shadow_tokens: float = 0.0
    shadow_matches: float = 0.0
    exits: list[float] | None = None

    def __add__(self, other: Counts) -> Counts:
        exits = None
        if self.exits is not None and other.exits is not None:
            exits = [a + b for a, b in zip(self.exits, other.exits, strict=True)]
        return Counts(
            tokens=self.tokens + other.tokens,
            breaches=self.breaches + other.breaches,
            requests=self.requests + other.requests,
            shadow_tokens=self.shadow_tokens + other.shadow_tokens,
            shadow_matches=self.shadow_matches + other.shadow_matches,
            exits=exits,
        )


def counts_between(previous: WorkerCounters, current: WorkerCounters) -> Counts:
    """What one worker counted from ``previous`` to ``current`` (per-layer exits at ``current.layers``)."""
    if current.tokens < previous.tokens:  # the worker restarted: everything it counted is new
        previous = WorkerCounters.zero(current.layers)
    now_exits = exits_per_layer(current.exit_buckets, current.layers)
    before_exits = (  # a baseline without buckets has counted nothing (``WorkerCounters.zero``)
        exits_per_layer(previous.exit_buckets, current.layers) if previous.exit_buckets else [0.0] * current.layers
    )
    exits = None
    if now_exits is not None and before_exits is not None:
        exits = [after - before for after, before in zip(now_exits, before_exits, strict=True)]
    return Counts(
        tokens=counter_delta(current.tokens, previous.tokens),
        breaches=counter_delta(current.breaches, previous.breaches),
        requests=counter_delta(current.requests, previous.requests),
        shadow_tokens=counter_delta(current.shadow_tokens, previous.shadow_tokens),
        shadow_matches=counter_delta(current.shadow_matches, previous.shadow_matches),
        exits=exits,
    )


def telemetry_from(counts: Counts, model: str, layers: int, observed_at: datetime) -> Telemetry:
    """The policy's view of ``counts`` from workers serving ``model`` with ``layers`` loaded."""
    tokens = round(counts.tokens)
    histogram = [max(0, round(n)) for n in counts.exits] if counts.exits is not None else []
    # Tokens that exited beyond L (a scrape that straddles a layer drop) or a worker without a
    # histogram leave it short of the token count; then it is unknown for this scrape, not wrong.
    if sum(histogram) != tokens:
        histogram = []
    shadow_tokens = max(0, round(counts.shadow_tokens))
    return Telemetry(
        observed_at=observed_at,
        model=model,
        layers=layers,
        num_new_tokens=tokens,
        num_new_breaches=min(tokens, max(0, round(counts.breaches))),
        num_new_requests=max(0, round(counts.requests)),
        exit_histogram=histogram,
        num_shadow_tokens=shadow_tokens,
        num_shadow_matches=min(shadow_tokens, max(0, round(counts.shadow_matches))),
    )
