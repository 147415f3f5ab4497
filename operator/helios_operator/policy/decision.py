"""What the policy decided, with the numbers it decided on, and a bounded history of it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from helios_operator.policy.predict import Prediction
from helios_operator.spec import MAX_DECISION_HISTORY, DecisionSummary

DecisionKind = Literal["select", "add_layers", "drop_layers", "switch_model", "reassess", "hold"]
DEFAULT_HISTORY_LENGTH = MAX_DECISION_HISTORY  # what the status keeps


class Decision(BaseModel):
    """One policy outcome: serve ``model`` with its first ``layers`` layers, and why.

    The predicted figures are None where the decision keeps things as they are without a
    fresh prediction (a hold on stale telemetry, a reassessment request).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: DecisionKind
    model: str
    layers: int = Field(ge=1)
    layers_total: int | None = Field(default=None, ge=1)
    reason: str
    tokens_per_second: float | None = None
    agreement: float | None = None
    agreement_lower_bound: float | None = Field(
        default=None, description="95% Wilson lower bound of the agreement over num_tokens evaluation tokens."
    )
    time_per_output_token_seconds: float | None = None
    energy_per_token_joules: float | None = None
    max_batch_size: int | None = None
    breach_rate: float | None = None
    breach_rate_upper_bound: float | None = Field(
        default=None, description="95% Wilson upper bound of the breach rate over num_tokens evaluation tokens."
    )
    num_tokens: int | None = Field(default=None, description="Evaluation tokens the figures are measured on.")
    mean_exit_layer: float | None = None
    weight_bytes: int | None = None
    timestamp: datetime | None = None

    @classmethod
    def from_prediction(
        cls, kind: DecisionKind, prediction: Prediction, reason: str, now: datetime | None = None
    ) -> Decision:
        return cls(
            kind=kind,
            model=prediction.model,
            layers=prediction.layers,
            layers_total=prediction.layers_total,
            reason=reason,
            tokens_per_second=prediction.tokens_per_second,
            agreement=prediction.agreement,
            agreement_lower_bound=prediction.agreement_lower_bound,
            time_per_output_token_seconds=prediction.time_per_output_token_seconds,
            energy_per_token_joules=prediction.energy_per_token_joules,
            max_batch_size=prediction.max_batch_size,
            breach_rate=prediction.breach_rate,
            breach_rate_upper_bound=prediction.breach_rate_upper_bound,
            num_tokens=prediction.num_tokens,
            mean_exit_layer=prediction.mean_exit_layer,
            weight_bytes=prediction.weight_bytes,
            timestamp=now,
        )

    def summary(self) -> DecisionSummary:
        """The short form kept in the HeliosDeployment status."""
        return DecisionSummary(
            kind=self.kind, model=self.model, layers=self.layers, reason=self.reason, timestamp=self.timestamp
        )


def append_decision(
    history: Sequence[Decision], decision: Decision, limit: int = DEFAULT_HISTORY_LENGTH
) -> tuple[Decision, ...]:
    """The history with ``decision`` added, keeping only the newest ``limit`` entries (oldest first)."""
    if limit < 1:
        raise ValueError(f"history limit must be >= 1, got {limit}")
    return (*history, decision)[-limit:]
