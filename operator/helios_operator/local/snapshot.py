"""What ``helios run`` is doing now: served at /helios/status, drawn by the dashboard, read by
``helios status`` and the benchmark. A plain pydantic model, because it crosses processes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from helios_operator.local.state import LogEntry, Phase

MAX_SERIES_POINTS = 900


class SeriesPoint(BaseModel):
    """One scrape of the serving worker."""

    model_config = ConfigDict(extra="forbid")

    at: datetime
    model: str
    layers: int
    num_new_tokens: int
    num_new_breaches: int
    tokens_per_second: float
    window_breach_rate: float = Field(description="Breaches over tokens in the policy's sliding window.")


class RunStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phase: Phase
    message: str = Field(default="", description="What is happening right now (evaluation progress, waits).")
    spec_hash: str
    proxy_url: str | None = None
    state_file: str | None = None
    model: str | None = None
    layers: int | None = None
    layers_total: int | None = None
    worker_pid: int | None = None
    worker_url: str | None = None
    num_forwarded: int = 0
    num_failed: int = 0
    num_switches: int = 0
    num_layer_changes: int = 0
    num_worker_restarts: int = 0
    log: list[LogEntry] = Field(default_factory=list)
    series: list[SeriesPoint] = Field(default_factory=list)
