"""One local worker's /metrics -> the policy's ``Telemetry`` (counts since the previous scrape).

Parsing lives in ``helios_operator.worker_metrics`` (shared with the Kubernetes operator); what
is local is the baseline: a worker started by this run begins at zero, so its first scrape's
counts are all new (the baseline is ``WorkerCounters.zero()``), and ``model`` is the candidate
this run started it with.
"""

from __future__ import annotations

from datetime import datetime

from helios_operator.policy import Telemetry
from helios_operator.worker_metrics import MetricsError, WorkerCounters, counts_between, read_counters, telemetry_from

__all__ = ["MetricsError", "WorkerCounters", "read_counters", "telemetry_between"]


def telemetry_between(
    previous: WorkerCounters, current: WorkerCounters, model: str, observed_at: datetime
) -> Telemetry:
    """What happened between two scrapes of the worker serving candidate ``model``."""
    return telemetry_from(counts_between(previous, current), model, current.layers, observed_at)
