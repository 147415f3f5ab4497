"""What ``helios run`` is doing now: served at /helios/status, drawn by the dashboard, read by
``helios status`` and the benchmark. A plain pydantic model, because it crosses processes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from helios_operator.local.state import LogEntry, Phase
from helios_operator.policy import Decision

MAX_SERIES_POINTS = 900


class Evaluated(BaseModel):
    """What the evaluation measured for the setting being served, with the 95% bounds it was chosen on."""

    model_config = ConfigDict(extra="forbid")

    agreement: float
    agreement_lower_bound: float
    breach_rate: float
    breach_rate_upper_bound: float
    num_tokens: int = Field(description="Evaluation tokens the figures are over.")
    min_agreement: float | None = Field(default=None, description="The spec's accuracy floor.")

    @classmethod
    def from_decision(cls, decision: Decision | None, min_agreement: float | None = None) -> Evaluated | None:
        """None for a decision without the figures (a hold, or one saved before the bounds were recorded)."""
        if decision is None:
            return None
        figures = {
            "agreement": decision.agreement,
            "agreement_lower_bound": decision.agreement_lower_bound,
            "breach_rate": decision.breach_rate,
            "breach_rate_upper_bound": decision.breach_rate_upper_bound,
            "num_tokens": decision.num_tokens,
        }
        if None in figures.values():
            return None
        return cls.model_validate({**figures, "min_agreement": min_agreement})


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
    evaluated: Evaluated | None = Field(default=None, description="The evaluation's figures for this setting.")
    worker_pid: int | None = None
    worker_url: str | None = None
    num_forwarded: int = 0
    num_failed: int = 0
    num_switches: int = 0
    num_layer_changes: int = 0
    num_worker_restarts: int = 0
    log: list[LogEntry] = Field(default_factory=list)
    series: list[SeriesPoint] = Field(default_factory=list)
