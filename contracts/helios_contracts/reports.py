"""The evaluation report: what a worker measured about one candidate model.

It crosses process boundaries (worker -> JSON -> operator / `helios decide`), so it is a
versioned pydantic model and imports nothing heavy: the operator image has no torch.
Layer indices are 1-based everywhere (layer ``l`` means "after ``l`` decoder layers").
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from helios_contracts.memory_model import ModelShape

REPORT_VERSION = "helios.evaluation/v1"


class EvaluationReport(BaseModel):
    """Step 2 of the HELIOS loop for one candidate: full-depth run over real prompts."""

    model_config = ConfigDict(extra="forbid")

    version: Literal["helios.evaluation/v1"] = REPORT_VERSION
    model: str = Field(description="Candidate name as the spec or the CLI gave it.")
    model_ref: str = Field(description="The model reference that was loaded.")
    revision: str | None = None
    architecture: str = Field(description="Hugging Face model_type, e.g. llama, opt.")
    num_layers_total: int = Field(ge=1)
    exit_threshold: float = Field(gt=0.0, le=1.0)
    num_prompts: int = Field(ge=0)
    num_tokens: int = Field(ge=0, description="Generated tokens the statistics below are over.")

    exit_layer_histogram: list[int] = Field(
        description="Index l-1 counts tokens whose first confident layer is l (unconfident tokens count at N)."
    )
    agreement_by_layer: list[float] = Field(
        description="Index l-1: fraction of tokens whose argmax after l layers equals the full-depth token."
    )
    confident_fraction_by_layer: list[float] = Field(
        description="Index l-1: fraction of tokens whose max softmax probability after l layers >= threshold."
    )
    greedy_agreement_by_layer: list[float] = Field(
        description="Index L-1: agreement with full depth if only L layers were loaded (exit early or at L)."
    )
    breach_rate_by_layer: list[float] = Field(
        description="Index L-1: fraction of tokens that would reach L unconfident (confidence breaches)."
    )
    mean_exit_layer_by_layer: list[float] = Field(
        description="Index L-1: mean exit layer if only L layers were loaded."
    )

    tokens_per_second: float = Field(
        ge=0.0,
        description="Full-depth throughput while evaluating (generated tokens over wall time, prefill included).",
    )
    includes_exit_checks: bool = Field(
        default=False,
        description=(
            "True if tokens_per_second and the latencies were timed with an exit test after every layer "
            "(probe mode); False if timed on a plain full-depth pass with one head per token."
        ),
    )
    time_per_output_token_seconds: float = Field(ge=0.0)
    time_to_first_token_seconds: float = Field(ge=0.0)
    peak_memory_bytes: int = Field(ge=0)
    bytes_per_layer: int = Field(ge=0, description="Weight bytes of one decoder layer.")
    bytes_shared: int = Field(ge=0, description="Weight bytes outside decoder layers (embeddings, norm, head).")
    kv_bytes_per_token_per_layer: int = Field(ge=0)
    energy_per_token_joules: float | None = Field(default=None, description="From NVML; None without a GPU.")
    shape: ModelShape | None = Field(
        default=None,
        description="Model sizes for the memory model (helios_contracts.memory_model); None in old reports.",
    )
    exits: str | None = Field(
        default=None,
        description="Calibrated exits the curves were measured with (helios calibrate: model@id); None: the "
        "plain shared head at the exit threshold.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None, description="The dtype the candidate was evaluated (and is served) in."
    )
    device: str = "cpu"
    evaluated_at: datetime | None = Field(default=None, description="When the evaluation finished (UTC).")

    @model_validator(mode="after")
    def _per_layer_lists_have_one_entry_per_layer(self) -> EvaluationReport:
        n = self.num_layers_total
        for name in (
            "exit_layer_histogram",
            "agreement_by_layer",
            "confident_fraction_by_layer",
            "greedy_agreement_by_layer",
            "breach_rate_by_layer",
            "mean_exit_layer_by_layer",
        ):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have num_layers_total={n} entries")
        return self

    def weight_bytes(self, layers: int) -> int:
        """Bytes of weights when only the first ``layers`` decoder layers are loaded."""
        return self.bytes_shared + layers * self.bytes_per_layer
