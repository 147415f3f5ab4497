"""Calibrated exits: per-layer translators and trained gates, stored beside a model.

A sidecar directory holds ``exits.safetensors`` (the tensors) and ``exits.json`` (the
manifest: which model it was fitted on, where, and how well it did on held-out text).
``helios calibrate`` writes it; ``helios serve --exits DIR`` and ``helios evaluate --exits DIR``
use it. A sidecar is bound to one model: its hidden size, depth and weights fingerprint must
match, or it is refused.

At an exit layer l the translator maps the hidden state to the space of the last layer,
h' = h + h W_l + b_l (zero-initialised: without fitting it is the plain shared head, as in
tuned lens), and the shared final norm + LM head read h'. The gate is a logistic classifier
on h' that predicts "this layer's top-1 is the last layer's top-1": a token whose gate
probability reaches the layer's gate threshold gets the head (the others never pay for it),
and exits when the translated distribution's top probability reaches the layer's confidence
threshold. Both thresholds are chosen at calibration: the confidence one for a precision
target, the gate one to keep 90% of the tokens that would exit. The K/V fill of skipped
layers keeps the *raw* state h: a skipped layer's input is a residual-stream state like h,
which the translator's last-layer estimate is not.

Rewriting a sidecar in place (a recalibration on a shared volume) never shows a reader a
partial file: each file is written under a temporary name and renamed over the old one, the
tensors first, and the manifest names the SHA-256 of the tensors it goes with, so a reader that
meets the old manifest with the new tensors (or the reverse) reads again, then refuses.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

SIDECAR_VERSION = "helios.exits/v1"
TENSORS_FILE = "exits.safetensors"
MANIFEST_FILE = "exits.json"
_SAMPLE_BYTES = 1 << 20
READ_ATTEMPTS = 3  # a manifest and tensors from two different writes: read again after a pause
READ_RETRY_SECONDS = 1.0


class SidecarError(ValueError):
    """A sidecar that cannot be read or does not belong to the model."""


class LayerReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int = Field(ge=1)
    agreement_raw: float = Field(description="Held-out top-1 agreement with the last layer, plain shared head.")
    agreement_translated: float = Field(description="The same through the translator.")
    gate_threshold: float = Field(description="Gate probability from which a token gets the head here.")
    confidence_threshold: float = Field(description="Max softmax of the translated head at which it exits here.")
    gate_pass_rate: float = Field(description="Held-out share of tokens the gate sends to the head here.")
    pass_rate: float = Field(description="Held-out share of tokens that exit here (gate and confidence).")
    precision: float = Field(description="Held-out share of exited tokens equal to the last layer's top-1.")


class ExitManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = SIDECAR_VERSION
    model_ref: str
    weights_fingerprint: str
    num_layers_total: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    layers: list[int]
    precision_target: float
    num_train_tokens: int
    num_heldout_tokens: int
    per_layer: list[LayerReport]
    exit_layer_histogram: list[int] = Field(
        description="Held-out tokens by first layer whose gate lets them exit (never: at N), an exit profile."
    )
    created_at: datetime | None = None
    tensors_sha256: str | None = Field(
        default=None, description="SHA-256 of the exits.safetensors written with this manifest (None: older sidecars)."
    )

    @property
    def identity(self) -> str:
        """A short id of this calibration (what an EvaluationReport records)."""
        digest = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]
        return f"{self.model_ref}@{digest}"


def weights_fingerprint(files: list[Path]) -> str:
    """sha256 over each weight file's name, size, and first and last MiB (header included).

    Reading whole checkpoints would take minutes for large models; the header fixes names,
    dtypes and shapes, and the sampled bytes tell apart fine-tunes of the same shape.
    """
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(_SAMPLE_BYTES))
            handle.seek(max(0, size - _SAMPLE_BYTES))
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def rms_normalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def gate_probability(weight: torch.Tensor, bias: torch.Tensor, translated: torch.Tensor) -> torch.Tensor:
    """p(this layer's top-1 is the last layer's) = sigmoid(w . rms_normalise(h') + b), in float32."""
    return torch.sigmoid(rms_normalise(translated.float()) @ weight.float() + bias.float())


class CalibratedExits:
    """Translators and a trained gate for a model's exit layers, on its device and dtype."""

    name = "trained"

    def __init__(self, manifest: ExitManifest, tensors: dict[str, torch.Tensor]) -> None:
        self.manifest = manifest
        self.tensors = tensors
        self.thresholds = {report.layer: report.gate_threshold for report in manifest.per_layer}
        self.confidence_thresholds = {report.layer: report.confidence_threshold for report in manifest.per_layer}

    @property
    def layers(self) -> list[int]:
        return list(self.manifest.layers)

    def has(self, layer: int) -> bool:
        return f"layer.{layer}.translator.weight" in self.tensors

    def translate(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """h + h W + b for a calibrated layer; other layers' states pass unchanged."""
        if not self.has(layer):
            return hidden
        weight, bias = self.tensors[f"layer.{layer}.translator.weight"], self.tensors[f"layer.{layer}.translator.bias"]
        return hidden + hidden @ weight + bias

    def exit_probability(self, layer: int, translated: torch.Tensor) -> torch.Tensor:
        return gate_probability(
            self.tensors[f"layer.{layer}.gate.weight"], self.tensors[f"layer.{layer}.gate.bias"], translated
        )

    def confidence_threshold(self, layer: int, default: float) -> float:
        return self.confidence_thresholds.get(layer, default)

    # the ExitGate interface (helios_worker.gates)
    def passes(self, layer: int, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return self.passes_translated(layer, self.translate(layer, after))

    def passes_translated(self, layer: int, translated: torch.Tensor) -> torch.Tensor:
        """The gate on states already translated (the engine translates once for gate and head)."""
        if not self.has(layer):
            return torch.zeros(translated.shape[0], dtype=torch.bool, device=translated.device)
        return self.exit_probability(layer, translated) >= self.thresholds[layer]

    # --- files ----------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write the sidecar; each file replaces its old version in one rename (see the module docstring)."""
        from safetensors.torch import save

        directory.mkdir(parents=True, exist_ok=True)
        data = save({k: v.detach().float().cpu().contiguous() for k, v in self.tensors.items()})
        self.manifest = self.manifest.model_copy(update={"tensors_sha256": hashlib.sha256(data).hexdigest()})
        _replace(directory / TENSORS_FILE, data)
        _replace(directory / MANIFEST_FILE, (self.manifest.model_dump_json(indent=2) + "\n").encode())

    @classmethod
    def load(
        cls, directory: Path, *, hidden_size: int, num_layers_total: int, fingerprint: str, device, dtype
    ) -> CalibratedExits:
        """Read a sidecar for a model; SidecarError when it is unreadable or fitted on another model."""
        manifest, tensors = _read(directory)
        if manifest.version != SIDECAR_VERSION:
            raise SidecarError(f"{directory}: sidecar version {manifest.version!r}, expected {SIDECAR_VERSION!r}")
        if manifest.hidden_size != hidden_size or manifest.num_layers_total != num_layers_total:
            raise SidecarError(
                f"{directory} was calibrated for a model with hidden size {manifest.hidden_size} and "
                f"{manifest.num_layers_total} layers; this one has {hidden_size} and {num_layers_total}"
            )
        if manifest.weights_fingerprint != fingerprint:
            raise SidecarError(
                f"{directory} was calibrated on other weights ({manifest.model_ref}); "
                "run helios calibrate for this model"
            )
        tensors = {
            k: v.to(device=device, dtype=dtype if "translator" in k else torch.float32) for k, v in tensors.items()
        }
        return cls(manifest, tensors)


def _replace(path: Path, data: bytes) -> None:
    """``path`` now holds ``data``, or (if this fails midway) still its old content: never a mix."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _read(directory: Path) -> tuple[ExitManifest, dict[str, torch.Tensor]]:
    """The manifest and the tensors written with it; SidecarError when they cannot be read together."""
    from pydantic import ValidationError
    from safetensors import SafetensorError
    from safetensors.torch import load

    for attempt in range(READ_ATTEMPTS):
        try:
            manifest = ExitManifest.model_validate_json((directory / MANIFEST_FILE).read_text())
            data = (directory / TENSORS_FILE).read_bytes()
        except (OSError, ValidationError, json.JSONDecodeError) as error:
            raise SidecarError(f"cannot read calibrated exits in {directory}: {error}") from None
        if manifest.tensors_sha256 in (None, hashlib.sha256(data).hexdigest()):
            try:
                return manifest, load(data)
            except SafetensorError as error:
                raise SidecarError(f"cannot read calibrated exits in {directory}: {error}") from None
        if attempt + 1 < READ_ATTEMPTS:
            time.sleep(READ_RETRY_SECONDS)  # being rewritten: the other file is about to follow
    raise SidecarError(
        f"{directory}: {TENSORS_FILE} is not the one {MANIFEST_FILE} was written with (a recalibration "
        "still writing, or files copied from two calibrations); calibrate again"
    )
