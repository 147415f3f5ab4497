"""The HeliosDeployment custom resource: spec and status, validated.

These pydantic models are the single source of truth for the CRD schema and its field
reference (both generated from them, camelCase via ``alias_generator``), for the operator
and for the embedded ``helios run``. Durations ("15s", "1m30s") are parsed to seconds and
quantities ("8Gi", "500M", bytes) to bytes at validation time, so the rest of the code
only sees numbers and a bad value is rejected with its field path.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from helios_contracts.candidate import Candidate as CandidateModel
from helios_contracts.candidate import SpecModel
from helios_operator.podtemplate import ExtraVolumeMount, PodTemplate

API_GROUP = "helios.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "HeliosDeployment"
MAX_CANDIDATES = 8
MAX_DECISION_HISTORY = 50

# --- units -----------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# Kubernetes quantity suffixes; a trailing "B" ("8GiB", "500MB") is accepted because
# people write memory that way and the CLI takes the same strings.
_QUANTITY = re.compile(r"^(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<suffix>[KMGTPE]i|[kKMGTPE])?B?$")
_QUANTITY_MULTIPLIER = {
    None: 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
# What Kubernetes accepts in resources.requests/limits (cpu "500m", memory "8Gi", "1").
_K8S_QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|m|[kMGTPE]i?)?$")


def parse_duration(value: Any) -> float:
    """Seconds from "500ms", "15s", "2m", "1h30m" or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: expected e.g. '15s', '2m' or '1h30m'")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"invalid duration {value!r}: must be a finite number of seconds >= 0")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: expected a string such as '15s'")
    text = value.strip()
    try:
        return parse_duration(float(text))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(
            f"invalid duration {value!r}: expected numbers with units ms, s, m or h, e.g. '15s' or '1m30s'"
        )
    return sum(float(number) * _DURATION_SECONDS[unit] for number, unit in parts)


def parse_quantity(value: Any) -> int:
    """Bytes from a Kubernetes quantity ("8Gi", "500M", "1.5Gi", "8GiB") or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"invalid quantity {value!r}: expected bytes or e.g. '8Gi'")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"invalid quantity {value!r}: must be a finite number of bytes >= 0")
        return math.ceil(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid quantity {value!r}: expected bytes or a string such as '8Gi'")
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise ValueError(
            f"invalid quantity {value!r}: expected bytes or a number with a suffix "
            "Ki, Mi, Gi, Ti (binary) or k, M, G, T (decimal), e.g. '8Gi'"
        )
    # Kubernetes rounds fractional byte counts up; so do we.
    return math.ceil(float(match["number"]) * _QUANTITY_MULTIPLIER[match["suffix"]])


# The string forms the parsers take, as the CRD's patterns (an int-or-string pattern applies to the
# string form; RE2 and ECMA syntax alike), so the API server refuses "banana" and "0.4s5" itself.
# The strings they match parse (tests/test_crds.py checks both ways); bounds stay with pydantic.
DURATION_PATTERN = r"^(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,2})?$|^((\d+(\.\d*)?|\.\d+)(ms|s|m|h))+$"
QUANTITY_PATTERN = r"^(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,2})?\s*([KMGTPE]i|[kKMGTPE])?B?$"


def _int_or_string(pattern: str) -> WithJsonSchema:
    """The CRD stores these as int-or-string (the Kubernetes convention for quantities)."""
    return WithJsonSchema(
        {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True, "pattern": pattern}
    )


Duration = Annotated[float, BeforeValidator(parse_duration), _int_or_string(DURATION_PATTERN)]
Quantity = Annotated[int, BeforeValidator(parse_quantity), _int_or_string(QUANTITY_PATTERN)]
K8sQuantity = Annotated[str, BeforeValidator(str), Field(pattern=_K8S_QUANTITY.pattern)]
# RFC 1123 subdomain.
ObjectName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    ),
]

Objective = Literal["throughput", "latency", "energy", "batchSize"]
Phase = Literal["Pending", "Evaluating", "Serving", "Adapting", "Degraded", "Failed", "Invalid"]


# --- spec --------------------------------------------------------------------------------


class AccuracySpec(SpecModel):
    min_agreement: float = Field(
        default=0.98,
        ge=0.0,
        le=1.0,
        description="Accuracy floor: fraction of tokens that must equal the full-depth token.",
    )


class ExitSpec(SpecModel):
    threshold: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="A token exits at the first layer whose max softmax probability is >= this.",
    )
    min_exit_layer: int | None = Field(
        default=None,
        ge=1,
        description="No exit test before this layer (1-based); HELIOS also never loads fewer layers.",
    )
    head_cost_layers: float | None = Field(
        default=None,
        ge=0.0,
        description="Cost of one exit test (final norm + LM head) in units of one decoder layer, used to "
        "predict throughput. Unset: estimated from the report's weight bytes.",
    )
    gate: Literal["none", "saturation"] = Field(
        default="none",
        description="O(hidden) test that decides which tokens get the LM head at an exit layer: none (every "
        "token) or saturation (cosine of a layer's input and output, CALM). Workers place exit tests where the "
        "evaluation's exit histogram says they pay.",
    )


class ConfigMapPromptsRef(SpecModel):
    name: ObjectName = Field(description="ConfigMap in the HeliosDeployment's namespace.")
    key: str = Field(default="prompts", min_length=1, description="Key holding one prompt per line.")


class PromptSource(SpecModel):
    """Exactly one source; with none given, recent traffic is used."""

    inline: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, min_length=1, description="Evaluation prompts written in the spec."
    )
    config_map_ref: ConfigMapPromptsRef | None = Field(
        default=None, description="Evaluation prompts read from a ConfigMap."
    )
    recent_traffic: bool | None = Field(
        default=None,
        description="Evaluate on the most recent real requests (the paper's choice); before any "
        "traffic has arrived the worker's built-in prompts are used.",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> PromptSource:
        chosen = [
            name
            for name, is_set in (
                ("inline", self.inline is not None),
                ("configMapRef", self.config_map_ref is not None),
                ("recentTraffic", bool(self.recent_traffic)),
            )
            if is_set
        ]
        if len(chosen) > 1:
            raise ValueError(f"choose one prompt source, got {', '.join(chosen)}")
        if not chosen:
            if self.recent_traffic is False:
                raise ValueError("recentTraffic is false and no inline prompts or configMapRef are given")
            self.recent_traffic = True
        return self

    @property
    def kind(self) -> Literal["inline", "configMap", "recentTraffic"]:
        if self.inline is not None:
            return "inline"
        return "configMap" if self.config_map_ref is not None else "recentTraffic"


class ResourceRequirements(SpecModel):
    requests: dict[str, K8sQuantity] = Field(
        default_factory=dict, description="As in a Pod, e.g. {cpu: '2', memory: 8Gi}."
    )
    limits: dict[str, K8sQuantity] = Field(
        default_factory=dict, description="As in a Pod, e.g. {memory: 16Gi, nvidia.com/gpu: 1}."
    )


class ConfigMapTextsRef(SpecModel):
    name: ObjectName = Field(description="ConfigMap in the HeliosDeployment's namespace.")
    key: str = Field(
        default="texts",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key holding the calibration text (plain text, any length up to the ConfigMap limit).",
    )


class CalibrationTexts(SpecModel):
    """Exactly one source of the text a calibration fits on."""

    config_map_ref: ConfigMapTextsRef | None = Field(default=None, description="Text read from a ConfigMap key.")
    path: str | None = Field(
        default=None,
        min_length=1,
        pattern=r"^[^:\s]+$",
        description="A text file, or a directory of .txt/.md/.rst/.py files, on the model volume (relative to it, "
        "or absolute as the worker container sees it, e.g. /models/texts).",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> CalibrationTexts:
        if (self.config_map_ref is None) == (self.path is None):
            raise ValueError("give exactly one of configMapRef or path")
        return self


ExitLayers = Annotated[str, Field(pattern=r"^(auto|[1-9][0-9]*(,[1-9][0-9]*)*)$")]


class CalibrateSpec(SpecModel):
    texts: CalibrationTexts = Field(description="Text the exits are fitted on, by self-distillation.")
    tokens: int = Field(default=20000, ge=100, description="Tokens of that text to use (a fifth is held out).")
    exit_layers: ExitLayers = Field(
        default="auto",
        description="Layers to fit exits at: auto (up to 12 over the upper three quarters) or a 1-based list, "
        "e.g. '4,6,8'.",
    )


class Candidate(CandidateModel):
    calibrate: CalibrateSpec | None = Field(
        default=None,
        description="Have HELIOS calibrate exits for this model before its evaluation: a Job of the worker image "
        "runs `helios-worker calibrate` and writes the sidecar to the calibration volume "
        "(spec.calibration.volume), which evaluation and serving pods mount read-only. Not with exits.",
    )

    @model_validator(mode="after")
    def _exits_or_calibrate(self) -> Candidate:
        if self.exits is not None and self.calibrate is not None:
            raise ValueError(f"candidate {self.name}: give exits or calibrate, not both")
        return self

    def contract(self, exits: str | None) -> CandidateModel:
        """The candidate as a worker takes it (HELIOS_EVAL_CANDIDATES): with the exits path it will read."""
        return CandidateModel(name=self.name, model=self.model, revision=self.revision, exits=exits)


class ExitsVolume(SpecModel):
    size: str = Field(
        default="1Gi", pattern=_K8S_QUANTITY.pattern, description="Storage requested by the calibration claim."
    )
    storage_class_name: str | None = Field(
        default=None, min_length=1, description="StorageClass of the claim. Unset: the cluster's default."
    )
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"]] = Field(
        default=["ReadWriteOnce"],
        min_length=1,
        description="Access modes of the claim. ReadWriteOnce lets only pods on one node mount it: when "
        "evaluation and serving pods run on several nodes, use ReadWriteMany (or ReadOnlyMany, with a "
        "provisioner that allows the Job's write).",
    )


class CalibrationSpec(SpecModel):
    volume: ExitsVolume = Field(
        default_factory=ExitsVolume,
        description="The PersistentVolumeClaim `<name>-exits` HELIOS creates when a candidate has calibrate; "
        "each such candidate's sidecar is at /mnt/exits/<candidate> on it.",
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Resources of calibration Jobs. Unset: those of evaluation pods."
    )
    timeout: Duration = Field(
        default="30m",
        validate_default=True,
        gt=0.0,
        description="activeDeadlineSeconds of a calibration Job, e.g. '30m': a Job still running then fails, and "
        "its candidate with it.",
    )


class EvaluationSpec(SpecModel):
    prompts_per_candidate: int = Field(
        default=8,
        ge=1,
        description="Prompts run through each candidate at full depth (paper: 5). The default 8 x maxNewTokens "
        "32 = 256 tokens per candidate: the 95% lower bound of a measured agreement of 0.97 is then 0.94 (from "
        "16 tokens: 0.76).",
    )
    max_new_tokens: int = Field(default=32, ge=1, description="Tokens generated per evaluation prompt.")
    time_budget: Duration | None = Field(
        default=None,
        gt=0.0,
        description="Generation time one candidate's evaluation may take, e.g. '30s' (model loading not "
        "included): when it runs out the worker stops and reports the tokens it got, and the 95% bounds widen "
        "to match. Unset: no limit. Must be below timeout.",
    )
    prompts: PromptSource = Field(default_factory=PromptSource, description="Where evaluation prompts come from.")
    reassess_every_requests: int = Field(
        default=150, ge=1, description="Re-evaluate the candidates after this many requests (paper: 150)."
    )
    reassess_interval: Duration | None = Field(
        default=None,
        gt=0.0,
        description="Also re-evaluate after this long, e.g. '30m'. Unset: requests only.",
    )
    min_reassess_interval: Duration = Field(
        default="5m",
        validate_default=True,
        ge=0.0,
        description="At least this long between two reassessments, however busy the service, e.g. '5m'.",
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="Resources of evaluation pods. Unset: the worker's. Reassessment rounds run one candidate pod "
        "at a time, so a reassessment holds at most one such pod beside the serving ones.",
    )
    timeout: Duration = Field(
        default="10m",
        validate_default=True,
        gt=0.0,
        description="Deadline of an evaluation round, e.g. '10m': a candidate without a report by then (its pod "
        "unschedulable, pulling, crash-looping or slow) is dropped from the round with the reason; pods that fail "
        "(Failed, Evicted, ImagePullBackOff, CrashLoopBackOff past a few restarts, the worker reporting failure) are "
        "dropped at once.",
    )

    @model_validator(mode="after")
    def _time_budget_below_timeout(self) -> EvaluationSpec:
        if self.time_budget is not None and self.time_budget >= self.timeout:
            raise ValueError(
                f"timeBudget ({self.time_budget:g} s) must be below timeout ({self.timeout:g} s), or every "
                "candidate is dropped before its budget runs out"
            )
        return self


class ShadowSpec(SpecModel):
    fraction: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of tokens also run at full depth to measure live agreement. 0 disables.",
    )
    window_tokens: int = Field(default=200, ge=1, description="Shadow tokens needed before their agreement is judged.")


class HeadroomSpec(SpecModel):
    max_tail_fraction: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="Drop layers only if at most this fraction of a full window's tokens exit beyond "
        "the new layer count.",
    )
    storm_memory: Duration = Field(
        default="10m",
        validate_default=True,
        ge=0.0,
        description="After a breach storm at L layers, never drop back to L or fewer for this long.",
    )


class MonitoringSpec(SpecModel):
    interval: Duration = Field(
        default="15s", validate_default=True, gt=0.0, description="How often worker telemetry is scraped."
    )
    stale_after: Duration | None = Field(
        default=None,
        gt=0.0,
        description="Telemetry older than this is stale and HELIOS holds. Unset: three intervals.",
    )
    breach_window_tokens: int = Field(
        default=100,
        ge=1,
        description="Sliding window of tokens over which breaches are counted (paper: 100).",
    )
    max_breaches: int = Field(
        default=50,
        ge=0,
        description="A breach storm is more than this many breaches in the window (paper: 50).",
    )
    target_breach_fraction: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="A new setting must be predicted to keep breaches at or below this fraction of "
        "maxBreaches, so it does not sit at the edge of the next storm (hysteresis).",
    )
    cooldown: Duration = Field(
        default="60s", validate_default=True, ge=0.0, description="Minimum time between two changes."
    )
    min_improvement: float = Field(
        default=0.05,
        ge=0.0,
        description="At reassessment, switch only if the objective improves by more than this fraction.",
    )
    load_bandwidth: Quantity = Field(
        default="1Gi",
        validate_default=True,
        gt=0,
        description="Bytes per second at which weights load; used to compare adding layers with switching.",
    )
    shadow: ShadowSpec = Field(default_factory=ShadowSpec, description="Shadow full-depth accuracy check.")
    headroom: HeadroomSpec = Field(default_factory=HeadroomSpec, description="When to drop unused layers.")

    @field_validator("max_breaches")
    @classmethod
    def _breaches_fit_in_window(cls, value: int, info: ValidationInfo) -> int:
        window = info.data.get("breach_window_tokens")
        if window is not None and value > window:
            raise ValueError(f"must be <= breachWindowTokens ({window}), got {value}")
        return value

    @property
    def stale_after_seconds(self) -> float:
        return self.stale_after if self.stale_after is not None else 3 * self.interval


class SecretKeyRef(SpecModel):
    name: ObjectName = Field(description="Secret in the HeliosDeployment's namespace.")
    key: str = Field(default="token", min_length=1, description="Key holding the value.")


class KeyRef(SpecModel):
    name: ObjectName = Field(description="Object in the HeliosDeployment's namespace.")
    key: str = Field(min_length=1, description="Key holding the value.")
    optional: bool | None = Field(default=None, description="Start the container even if the key is missing.")


class EnvVarSource(SpecModel):
    """Exactly one source, as in a Pod's env[].valueFrom."""

    secret_key_ref: KeyRef | None = Field(default=None, description="A key of a Secret (API keys, tokens).")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A key of a ConfigMap.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("give exactly one of secretKeyRef or configMapKeyRef")
        return self


class EnvVar(SpecModel):
    name: str = Field(min_length=1, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="Variable name.")
    value: str = Field(default="", description="Variable value (plain text: use valueFrom for secrets).")
    value_from: EnvVarSource | None = Field(
        default=None, description="Take the value from a Secret or ConfigMap key instead, e.g. HELIOS_API_KEY."
    )

    @model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value and self.value_from is not None:
            raise ValueError(f"env {self.name}: give value or valueFrom, not both")
        return self

    def manifest(self) -> dict[str, Any]:
        """The Pod env entry."""
        if self.value_from is None:
            return {"name": self.name, "value": self.value}
        return {"name": self.name, "valueFrom": self.value_from.model_dump(by_alias=True, exclude_none=True)}


class ModelVolume(SpecModel):
    claim_name: ObjectName | None = Field(
        default=None,
        description="PersistentVolumeClaim holding models or a Hugging Face cache. Unset: an emptyDir "
        "Hugging Face cache that is downloaded into.",
    )
    cache_size_limit: Quantity | None = Field(
        default=None, description="sizeLimit of the emptyDir cache (only without claimName)."
    )

    @model_validator(mode="after")
    def _size_limit_only_for_cache(self) -> ModelVolume:
        if self.claim_name is not None and self.cache_size_limit is not None:
            raise ValueError("cacheSizeLimit applies to the emptyDir cache; remove it or claimName")
        return self


class WorkerSpec(SpecModel):
    image: str | None = Field(default=None, description="Worker image. Unset: the operator's default image.")
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Worker container resources."
    )
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables.")
    model_volume: ModelVolume = Field(default_factory=ModelVolume, description="Where model weights live.")
    hf_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret with a Hugging Face token for gated models."
    )
    # PyTorch (DataLoader workers, NCCL, CUDA IPC) needs more shared memory than the 64 MB a
    # container runtime gives /dev/shm by default; too little fails with "bus error" or hangs.
    shm_size: Quantity = Field(
        default="1Gi",
        validate_default=True,
        description="sizeLimit of the memory-backed (medium: Memory) emptyDir mounted at /dev/shm in the "
        "worker container; it counts against the container's memory limit. 0: no such volume (the "
        "container runtime's 64 MB /dev/shm).",
    )
    volume_mounts: list[ExtraVolumeMount] = Field(
        default_factory=list,
        description="Mounts of podTemplate.spec.volumes in the worker container, after HELIOS's own.",
    )
    pre_stop_delay: Duration = Field(
        default="10s",
        validate_default=True,
        ge=0.0,
        description="How long a serving pod keeps answering after it is told to stop (a preStop sleep), before "
        "SIGTERM: longer than the cluster takes to remove its endpoint, so that no request is routed to a pod "
        "that already refuses new ones.",
    )
    drain_timeout: Duration = Field(
        default="30s",
        validate_default=True,
        ge=0.0,
        description="After SIGTERM, how long in-flight requests get to finish. terminationGracePeriodSeconds is "
        "preStopDelay + drainTimeout + 10 s, so the kubelet never kills a pod that is still draining.",
    )
    pod_template: PodTemplate = Field(
        default_factory=PodTemplate,
        description="Overlay merged onto every pod HELIOS generates (evaluation pods and the serving "
        "Deployment's pod template): lists (tolerations, topologySpreadConstraints, imagePullSecrets, "
        "volumes, containers, initContainers) are appended after HELIOS's entries; maps (nodeSelector, "
        "labels, annotations) are merged, HELIOS's selector labels cannot be overridden; single values "
        "(affinity, runtimeClassName, priorityClassName, schedulerName) are set; securityContext is "
        "merged key by key.",
    )

    @model_validator(mode="after")
    def _mounts_name_overlay_volumes(self) -> WorkerSpec:
        volumes = {volume.name for volume in self.pod_template.spec.volumes}
        for number, mount in enumerate(self.volume_mounts):
            if mount.name not in volumes:
                raise ValueError(
                    f"volumeMounts[{number}].name: {mount.name!r} is not a volume of podTemplate.spec.volumes"
                )
        return self


class HeliosDeploymentSpec(SpecModel):
    candidates: list[Candidate] = Field(
        min_length=1, max_length=MAX_CANDIDATES, description="Models HELIOS chooses among (the shortlist)."
    )
    objective: Objective = Field(default="throughput", description="What to optimise under the accuracy floor.")
    accuracy: AccuracySpec = Field(default_factory=AccuracySpec, description="Accuracy floor.")
    exit: ExitSpec = Field(default_factory=ExitSpec, description="Early-exit rule.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Real-time evaluation.")
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, description="Breach monitoring.")
    replicas: int = Field(default=1, ge=0, description="Worker replicas.")
    memory_budget: Quantity | None = Field(
        default=None,
        gt=0,
        description="Bytes per worker for weights and KV cache, e.g. '8Gi'. Unset: the device's memory.",
    )
    context_tokens: int = Field(default=2048, ge=1, description="Context length a batch slot is sized for.")
    worker: WorkerSpec = Field(default_factory=WorkerSpec, description="Worker pod settings.")
    calibration: CalibrationSpec = Field(
        default_factory=CalibrationSpec, description="Calibration Jobs of candidates with calibrate."
    )

    @model_validator(mode="after")
    def _calibrated_exits_gate(self) -> HeliosDeploymentSpec:
        calibrated = [c.name for c in self.candidates if c.exits is not None or c.calibrate is not None]
        if calibrated and self.exit.gate == "saturation":
            raise ValueError(
                f"exit.gate saturation cannot be combined with calibrated exits ({', '.join(calibrated)}), "
                "whose trained gate decides; use gate none"
            )
        return self

    @field_validator("candidates")
    @classmethod
    def _candidate_names_unique(cls, candidates: list[Candidate]) -> list[Candidate]:
        seen: set[str] = set()
        for candidate in candidates:
            if candidate.name in seen:
                raise ValueError(f"candidate name {candidate.name!r} is used more than once")
            seen.add(candidate.name)
        return candidates


# --- status ------------------------------------------------------------------------------


class Condition(SpecModel):
    type: str = Field(description="Condition type, e.g. Ready, TelemetryFresh.")
    status: Literal["True", "False", "Unknown"] = Field(description="Condition status.")
    reason: str = Field(default="", description="CamelCase reason.")
    message: str = Field(default="", description="Human-readable detail.")
    observed_generation: int | None = Field(default=None, description="Spec generation this was computed from.")
    last_transition_time: datetime | None = Field(default=None, description="When status last changed.")


class DecisionSummary(SpecModel):
    kind: str = Field(description="select, add_layers, drop_layers, switch_model, reassess or hold.")
    model: str = Field(description="Candidate chosen.")
    layers: int = Field(description="Layers loaded.")
    reason: str = Field(description="Why, with the numbers.")
    timestamp: datetime | None = Field(default=None, description="When it was decided.")
    repeats: int | None = Field(
        default=None,
        ge=2,
        description="A hold or reassess decision made this many times since the last change; only the newest is kept.",
    )


class HeliosDeploymentStatus(SpecModel):
    phase: Phase = Field(default="Pending", description="Lifecycle phase for printer columns.")
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")
    observed_generation: int | None = Field(default=None, description="Last spec generation acted on.")
    current_model: str | None = Field(default=None, description="Candidate being served.")
    current_layers: int | None = Field(default=None, description="Decoder layers loaded.")
    layers_total: int | None = Field(default=None, description="Decoder layers of the current model.")
    replicas: int = Field(default=0, ge=0, description="Worker replicas that exist.")
    ready_replicas: int = Field(default=0, ge=0, description="Worker replicas ready to serve.")
    last_decision: DecisionSummary | None = Field(default=None, description="Most recent decision.")
    decision_history: list[DecisionSummary] = Field(
        default_factory=list,
        max_length=MAX_DECISION_HISTORY,
        description=f"The last {MAX_DECISION_HISTORY} decisions, oldest first; repeated holds and reassessments "
        "between two changes are collapsed into their newest.",
    )


class HeliosDeployment(SpecModel):
    """A whole manifest, as `kubectl apply` or `helios run` reads it."""

    api_version: Literal["helios.dev/v1alpha1"] = Field(description="Must be helios.dev/v1alpha1.")
    kind: Literal["HeliosDeployment"] = Field(description="Must be HeliosDeployment.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Object metadata.")
    spec: HeliosDeploymentSpec = Field(description="Desired state.")
    status: HeliosDeploymentStatus | None = Field(default=None, description="Observed state.")


# --- loading -----------------------------------------------------------------------------


class SpecError(ValueError):
    """A spec file that cannot be used; the message names the file and each bad field."""


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, as 'spec.monitoring.maxBreaches: must be <= ...'."""
    lines = []
    for problem in error.errors():
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        path = path.lstrip(".")
        lines.append(f"{path}: {message}" if path else message)
    return "; ".join(lines)


def load_spec(path: str | Path) -> HeliosDeploymentSpec:
    """Read a HeliosDeployment manifest, or just its spec, from a YAML or JSON file."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SpecError(f"{path}: cannot read: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML or JSON: {error}") from error
    if not isinstance(document, dict):
        raise SpecError(f"{path}: expected a mapping (a HeliosDeployment or its spec)")
    try:
        if "kind" in document or "apiVersion" in document:
            return HeliosDeployment.model_validate(document).spec
        return HeliosDeploymentSpec.model_validate(document)
    except ValidationError as error:
        raise SpecError(f"{path}: {describe_validation_error(error)}") from error
