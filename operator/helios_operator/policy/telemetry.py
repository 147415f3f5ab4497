"""One scrape of a worker: counts since the previous scrape, as the worker's metrics give them."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


class Telemetry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    observed_at: AwareDatetime = Field(description="When the worker was scraped.")
    model: str = Field(description="Candidate the worker is serving.")
    layers: int = Field(ge=1, description="Layers it has loaded.")
    num_new_tokens: int = Field(ge=0, description="Tokens generated since the previous scrape.")
    num_new_breaches: int = Field(ge=0, description="Of those, tokens that reached the last layer unconfident.")
    num_new_requests: int = Field(ge=0, description="Requests finished since the previous scrape.")
    exit_histogram: list[int] = Field(
        default_factory=list,
        description="Index l-1: new tokens that exited at layer l (greedy exits count at L). Empty: unknown.",
    )
    num_shadow_tokens: int = Field(default=0, ge=0, description="New tokens also run at full depth.")
    num_shadow_matches: int = Field(default=0, ge=0, description="Of those, tokens equal to the full-depth one.")

    @model_validator(mode="after")
    def _counts_are_consistent(self) -> Telemetry:
        if self.num_new_breaches > self.num_new_tokens:
            raise ValueError("num_new_breaches cannot exceed num_new_tokens")
        if self.num_shadow_matches > self.num_shadow_tokens:
            raise ValueError("num_shadow_matches cannot exceed num_shadow_tokens")
        if self.exit_histogram and len(self.exit_histogram) != self.layers:
            raise ValueError(f"exit_histogram must have layers={self.layers} entries or none")
        if self.exit_histogram and sum(self.exit_histogram) != self.num_new_tokens:
            raise ValueError("exit_histogram must sum to num_new_tokens")
        return self

    def age_seconds(self, now: datetime) -> float:
        return (now - self.observed_at).total_seconds()
