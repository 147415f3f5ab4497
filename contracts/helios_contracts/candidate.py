"""A candidate model as the spec names it; the operator hands a list of them to evaluation pods."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# RFC 1123 label: candidate names end up in object names and metric labels.
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]


# A sidecar directory: a path (no ':'), file:///PATH or pvc://CLAIM/PATH; never a hub id.
EXITS_PATTERN = r"^(pvc://[a-z0-9]([-.a-z0-9]*[a-z0-9])?/[^\s/]\S*|file:///\S*|[^:\s]+)$"


class SpecModel(BaseModel):
    """Base of every spec/status model: camelCase in YAML, snake_case in Python, no unknown keys."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Candidate(SpecModel):
    name: DnsLabel = Field(description="Short unique name (RFC 1123 label); used in reports, metrics, status.")
    model: str = Field(
        min_length=1,
        # a plain reference has no ':'; a URI is one of the supported schemes
        pattern=r"^((hf|pvc|file)://\S+|[^:\s]+)$",
        description="Model reference: a Hugging Face repo id (org/name or hf://org/name), a built-in alias, "
        "a path inside the model volume, file:///path, or pvc://CLAIM/PATH (the claim is mounted read-only).",
    )
    revision: str | None = Field(default=None, description="Git revision (branch, tag or commit) of the model.")
    exits: str | None = Field(
        default=None,
        min_length=1,
        pattern=EXITS_PATTERN,
        description="Calibrated exits of this model (a `helios calibrate` sidecar directory), used by its "
        "evaluation and by the workers that serve it: a path inside the model volume (relative, or absolute "
        "as the worker container sees it, e.g. /models/exits/NAME), file:///path, or pvc://CLAIM/PATH (the "
        "claim is mounted read-only).",
    )

    @property
    def reference(self) -> str:
        """The model reference the loader and the worker commands take: ``model@revision`` when a
        revision is pinned (and the model names none of its own)."""
        if self.revision and "@" not in self.model:
            return f"{self.model}@{self.revision}"
        return self.model
