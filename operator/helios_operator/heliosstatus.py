"""What the operator reports: the HeliosDeployment status it writes and the HeliosStatus object.

``OperatorStatus`` extends the spec module's ``HeliosDeploymentStatus`` with the fields the
operator derives for printer columns and the scale subresource (a "12/30" layers string, a
label selector, the live breach rate and throughput). ``HeliosStatus`` is a namespaced object,
one per HeliosDeployment with the same name and owned by it, written only by the operator: the
evaluation table, a live telemetry summary and the bounded decision history. Both CRD schemas
are generated from these models (``helios_operator.crds``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from helios_operator.policy.predict import Prediction
from helios_operator.spec import (
    MAX_CANDIDATES,
    MAX_DECISION_HISTORY,
    DecisionSummary,
    HeliosDeploymentStatus,
    Phase,
    SpecModel,
)

HELIOS_STATUS_KIND = "HeliosStatus"


class CandidateFailure(SpecModel):
    """A candidate dropped from an evaluation round, and why."""

    name: str = Field(description="Candidate name.")
    reason: str = Field(description="What failed: the pod's or container's state, the worker's report or the deadline.")
    spec_hash: str | None = Field(default=None, description="Hash of the pod spec that failed; a new spec retries.")


class CalibrationRecord(SpecModel):
    """A candidate's calibration Job that succeeded, and for which inputs."""

    name: str = Field(description="Candidate name.")
    spec_hash: str = Field(description="Hash of the model, revision, texts and settings it was calibrated with.")
    exits: str = Field(description="Where its sidecar is, in the pods that mount the calibration claim.")


class WindowTotals(SpecModel):
    """A sliding window's totals (the breach or shadow window, collapsed to one entry)."""

    tokens: float = Field(ge=0.0, description="Tokens in the window.")
    hits: float = Field(ge=0.0, description="Breaches (breach window) or full-depth matches (shadow window).")
    exit_histogram: list[float] = Field(default_factory=list, description="Tokens per exit layer (breach window).")


class LayerRaiseStatus(SpecModel):
    model: str = Field(description="Candidate whose layer count proved too few.")
    layers: int = Field(ge=1, description="That layer count.")
    at: datetime = Field(description="When it was raised from.")


class PolicyState(SpecModel):
    """What the adaptation loop remembers between scrapes, kept here so a restarted operator decides the same."""

    model: str = Field(description="Candidate the state is about.")
    layers: int = Field(ge=1, description="Layer count the state is about.")
    breaches: WindowTotals = Field(description="The breach window.")
    shadow: WindowTotals = Field(description="The shadow-check window.")
    last_change_at: datetime | None = Field(default=None, description="Last change (cooldown starts here).")
    last_assessment_at: datetime | None = Field(default=None, description="Last evaluation or reassessment.")
    requests_since_assessment: int = Field(default=0, ge=0, description="Requests finished since then.")
    last_telemetry_at: datetime | None = Field(default=None, description="Newest scrape folded in.")
    last_raise: LayerRaiseStatus | None = Field(default=None, description="The last add_layers (hysteresis).")


class OperatorStatus(HeliosDeploymentStatus):
    """The HeliosDeployment status as the operator writes it."""

    layers: str | None = Field(default=None, description="Layers loaded of the total, e.g. '12/30'.")
    selector: str | None = Field(default=None, description="Label selector of the worker pods (scale subresource).")
    breach_rate: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Confidence breaches per token over the breach window."
    )
    tokens_per_second: float | None = Field(
        default=None, ge=0.0, description="Tokens generated per second by all workers at the last scrape."
    )
    target_model: str | None = Field(
        default=None, description="Candidate HELIOS decided to serve; currentModel follows once the rollout completes."
    )
    target_layers: int | None = Field(default=None, description="Layer count HELIOS decided on.")
    evaluation_round: int = Field(default=0, ge=0, description="Number of the latest candidate evaluation.")
    evaluation_pending: bool = Field(default=False, description="Whether that evaluation is still running.")
    evaluation_started_at: datetime | None = Field(default=None, description="When that evaluation started.")
    policy_state: PolicyState | None = Field(default=None, description="The adaptation loop's memory.")
    acted_spec: dict[str, str] = Field(
        default_factory=dict,
        description="Hash of each spec part the operator has acted on (to tell what an edit changed).",
    )
    failed_candidates: list[CandidateFailure] = Field(
        default_factory=list, max_length=MAX_CANDIDATES, description="Candidates that failed that evaluation."
    )
    calibrations: list[CalibrationRecord] = Field(
        default_factory=list,
        max_length=MAX_CANDIDATES,
        description="Calibration Jobs that succeeded: a candidate whose inputs are unchanged is not calibrated again.",
    )


class CandidateEvaluation(SpecModel):
    """One row of the evaluation table: a candidate at the layer count it would be served with."""

    name: str = Field(description="Candidate name.")
    model: str = Field(description="Model reference that was evaluated.")
    layers: int = Field(ge=1, description="Layer count the row is predicted at (the chosen L for the winner).")
    layers_total: int = Field(ge=1, description="Decoder layers of the model.")
    agreement: float = Field(ge=0.0, le=1.0, description="Agreement with full depth at that layer count.")
    mean_exit_layer: float = Field(ge=0.0, description="Mean exit layer at that layer count.")
    tokens_per_second: float = Field(ge=0.0, description="Predicted decode throughput at that layer count.")
    memory_bytes: int = Field(ge=0, description="Weight bytes at that layer count.")
    chosen: bool = Field(default=False, description="Whether this candidate is being served.")
    agreement_lower_bound: float | None = Field(
        default=None, ge=0.0, le=1.0, description="95% lower bound of the agreement: what the floor is compared with."
    )
    breach_rate: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Evaluated confidence breaches per token at that layer count."
    )
    breach_rate_upper_bound: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="95% upper bound of the breach rate: what the breach budget is compared with.",
    )
    num_tokens: int | None = Field(default=None, ge=0, description="Evaluation tokens the figures are over.")

    @classmethod
    def from_prediction(cls, prediction: Prediction, model_ref: str, chosen: bool) -> CandidateEvaluation:
        """The row of ``prediction`` (``helios_operator.policy.predict``), bounds included."""
        return cls(
            name=prediction.model,
            model=model_ref,
            layers=prediction.layers,
            layers_total=prediction.layers_total,
            agreement=prediction.agreement,
            mean_exit_layer=prediction.mean_exit_layer,
            tokens_per_second=prediction.tokens_per_second,
            memory_bytes=prediction.weight_bytes,
            chosen=chosen,
            agreement_lower_bound=prediction.agreement_lower_bound,
            breach_rate=prediction.breach_rate,
            breach_rate_upper_bound=prediction.breach_rate_upper_bound,
            num_tokens=prediction.num_tokens,
        )


class TelemetrySummary(SpecModel):
    """The last scrape of the workers, summarised."""

    observed_at: datetime = Field(description="When the workers were scraped.")
    num_workers: int = Field(ge=0, description="Ready worker pods.")
    num_scraped: int = Field(ge=0, description="Worker pods whose metrics were read.")
    tokens_per_second: float = Field(ge=0.0, description="Tokens per second since the previous scrape.")
    breach_rate: float = Field(ge=0.0, le=1.0, description="Breaches per token over the breach window.")
    window_tokens: float = Field(ge=0.0, description="Tokens in the breach window.")
    requests_since_assessment: int = Field(ge=0, description="Requests finished since the last evaluation.")
    shadow_agreement: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Shadow full-depth agreement over its window, if measured."
    )


class HeliosStatusSpec(SpecModel):
    deployment: str = Field(description="The HeliosDeployment this object reports on.")


class HeliosStatusReport(SpecModel):
    phase: Phase = Field(default="Pending", description="Phase of the HeliosDeployment.")
    model: str | None = Field(default=None, description="Candidate being served.")
    model_ref: str | None = Field(default=None, description="Its model reference.")
    layers: str | None = Field(default=None, description="Layers loaded of the total, e.g. '12/30'.")
    evaluated_at: datetime | None = Field(default=None, description="When the candidates were last evaluated.")
    candidates: list[CandidateEvaluation] = Field(
        default_factory=list, max_length=MAX_CANDIDATES, description="The last candidate evaluation table."
    )
    failed_candidates: list[CandidateFailure] = Field(
        default_factory=list, max_length=MAX_CANDIDATES, description="Candidates the last evaluation dropped, and why."
    )
    served: CandidateEvaluation | None = Field(
        default=None,
        description="The chosen row of candidates, repeated here so printer columns can read it by a plain path. "
        "Derived: set from candidates when not given.",
    )
    telemetry: TelemetrySummary | None = Field(default=None, description="Live telemetry at the last scrape.")
    last_decision: DecisionSummary | None = Field(default=None, description="Most recent decision.")
    decision_history: list[DecisionSummary] = Field(
        default_factory=list,
        max_length=MAX_DECISION_HISTORY,
        description=f"The last {MAX_DECISION_HISTORY} decisions with reasons, oldest first.",
    )

    @model_validator(mode="after")
    def _served_is_the_chosen_row(self) -> HeliosStatusReport:
        if self.served is None:
            self.served = next((row for row in self.candidates if row.chosen), None)
        return self


class HeliosStatus(SpecModel):
    """A whole HeliosStatus object."""

    api_version: Literal["helios.dev/v1alpha1"] = Field(description="Must be helios.dev/v1alpha1.")
    kind: Literal["HeliosStatus"] = Field(description="Must be HeliosStatus.")
    metadata: dict[str, object] = Field(default_factory=dict, description="Object metadata.")
    spec: HeliosStatusSpec = Field(description="Which HeliosDeployment this reports on.")
    status: HeliosStatusReport = Field(default_factory=HeliosStatusReport, description="What the operator saw.")
