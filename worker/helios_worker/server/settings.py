"""The worker's one validated config: ``helios serve`` flags over ``HELIOS_*`` environment variables.

Kubernetes configures the worker through the environment (the operator's pod template sets
HELIOS_MODE, HELIOS_MODEL, HELIOS_LAYERS, ...); people use flags. Every field has both, flags win, and
both are validated by the same pydantic model so a bad value reads the same either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from helios_worker.byte_sizes import parse_bytes
from helios_worker.exit_plan import DEFAULT_MAX_EXITS, PROFILE_FILE, parse_exit_layers, parse_histogram

ENV_PREFIX = "HELIOS_"
# Extra environment names a field also answers to (the operator's pod template uses these).
ENV_ALIASES: dict[str, tuple[str, ...]] = {"served_model_name": ("HELIOS_MODEL_NAME",)}


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the flag and the variable."""


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["serve", "evaluate"] = Field(
        default="serve", description="serve: the model over HTTP; evaluate: evaluate candidates, serve the reports"
    )
    model: str = Field(min_length=1, description="alias, local HF directory, or cached hub id")
    model_revision: str | None = Field(default=None, description="hub revision (appended to the model as @REV)")
    served_model_name: str | None = Field(default=None, description="name clients use (default: the model ref)")
    layers: int | None = Field(default=None, ge=1, description="decoder layers to load (default: all)")
    exit_threshold: float = Field(default=0.8, gt=0.0, le=1.0, description="a token exits when max softmax >= T")
    early_exit: bool = Field(default=True, description="exit tests at every layer from --min-exit-layer")
    min_exit_layer: int = Field(default=1, ge=1, description="first layer where a token may exit")
    exit_layers: str = Field(
        default="auto",
        description="auto (from the exit profile; none without one) | none | all | 1-based list like 4,6",
    )
    exit_profile: str | None = Field(
        default=None, description=f"evaluation report JSON placing exits (default: {PROFILE_FILE} in the model dir)"
    )
    exit_histogram: str | None = Field(
        default=None, description="first-confident-layer counts, one per layer (the operator passes its evaluation's)"
    )
    max_exits: int = Field(default=DEFAULT_MAX_EXITS, ge=0, le=64, description="at most this many exits with auto")
    exit_gate: Literal["none", "saturation", "trained"] = Field(
        default="none", description="O(hidden) test before the LM head: none | saturation | trained (needs --exits)"
    )
    exits: str | None = Field(
        default=None, description="calibrated exits (helios calibrate): translators feed the head, the gate decides"
    )
    gate_threshold: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="the gate's threshold (saturation: cosine, default 0.95)"
    )
    max_batch_size: int = Field(default=16, ge=1, le=4096, description="sequences decoded together")
    max_queue: int = Field(default=64, ge=0, description="requests waiting for a batch slot before 429")
    max_seq_len: int = Field(default=2048, ge=2, description="context per sequence (capped by the model)")
    device: str = Field(
        default="auto", min_length=1, description="auto (cuda if a GPU is visible, else cpu), cpu or cuda[:i]"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on CUDA where supported, float32 on the CPU"
    )
    memory_budget: str = Field(
        default="auto",
        description="bytes for weights + KV cache + activations (8Gi, 512Mi, ...); auto: free GPU memory x "
        "--gpu-memory-utilization, or half the cgroup/host memory on the CPU; none: --max-batch-size slots",
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0.0, le=1.0, description="share of free GPU memory an auto budget takes"
    )
    torch_threads: int | None = Field(
        default=None, ge=1, le=1024, description="CPU threads for torch (default: torch's; 1 suits small models)"
    )
    host: str = Field(default="0.0.0.0", min_length=1, description="address to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="port to listen on (0: any free port)")
    control_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="if set, the control API (/v1/helios/*) is served on this port only, and the OpenAI API, "
        "probes and metrics on --port only, so a NetworkPolicy can admit just the operator to it (0: any free port)",
    )
    api_key: str | None = Field(
        default=None, description="if set, the OpenAI API (/v1/*) needs 'Authorization: Bearer KEY'"
    )
    control_token: str | None = Field(
        default=None,
        description="if set, the control API (/v1/helios/*: layers, recent prompts, shadow, evaluation) needs "
        "'Authorization: Bearer TOKEN' and the API key does not open it (the operator sets it from a Secret)",
    )
    vllm_metrics: bool = Field(
        default=True, description="also export vLLM's metric names (vllm:*, label model_name) for autoscalers"
    )
    record_prompts: int = Field(default=0, ge=0, le=100_000, description="keep the last N prompt texts (0: off)")
    shadow_fraction: float = Field(
        default=0.0, ge=0.0, le=1.0, description="share of finished greedy requests kept for the shadow check (0: off)"
    )
    drain_seconds: float = Field(default=30.0, ge=0.0, description="on SIGTERM, time in-flight requests get")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="larger request bodies get 413")
    log_level: str = Field(
        default="info", pattern="^(critical|error|warning|info|debug)$", description="critical|error|warning|info|debug"
    )

    @field_validator("exit_layers")
    @classmethod
    def _exit_layers_parse(cls, value: str) -> str:
        parse_exit_layers(value)  # ValueError -> a validation error naming the flag
        return value

    @field_validator("memory_budget")
    @classmethod
    def _budget_parse(cls, value: str) -> str:
        if value not in ("auto", "none"):
            parse_bytes(value)
        return value

    @field_validator("exit_histogram")
    @classmethod
    def _histogram_parse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_histogram(value)
        return value

    @model_validator(mode="after")
    def _ports_differ(self) -> ServerSettings:
        if self.control_port is not None and self.control_port == self.port and self.port != 0:
            raise ValueError(f"control_port must differ from port ({self.port})")
        return self

    @model_validator(mode="after")
    def _trained_gate_needs_exits(self) -> ServerSettings:
        if self.exit_gate == "trained" and self.exits is None:
            raise ValueError("exit_gate trained needs calibrated exits (--exits DIR from helios calibrate)")
        if self.exits is not None and self.exit_gate == "saturation":
            raise ValueError("exit_gate saturation cannot be combined with --exits, whose trained gate decides")
        return self

    @field_validator(
        "api_key",
        "control_token",
        "control_port",
        "model_revision",
        "served_model_name",
        "exit_profile",
        "exit_histogram",
        "exits",
        mode="before",
    )
    @classmethod
    def _empty_means_unset(cls, value: Any) -> Any:
        # An empty HELIOS_API_KEY= in a manifest must not turn auth on with an empty key.
        return None if value == "" else value

    @property
    def model_ref(self) -> str:
        if self.model_revision and "@" not in self.model:
            return f"{self.model}@{self.model_revision}"
        return self.model

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any], environ: Mapping[str, str]) -> ServerSettings:
        """Flags (None = not given) over environment over defaults; SettingsError names what is wrong."""
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for name in cls.model_fields:
            if flags.get(name) is not None:
                values[name], origin[name] = flags[name], "--" + name.replace("_", "-")
                continue
            for variable in (ENV_PREFIX + name.upper(), *ENV_ALIASES.get(name, ())):
                if variable in environ:
                    values[name], origin[name] = environ[variable], variable
                    break
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else ""
            where = origin.get(field) or f"--{field.replace('_', '-')} / {ENV_PREFIX}{field.upper()}"
            given = f" (got {values[field]!r})" if field in values and field not in ("api_key", "control_token") else ""
            raise SettingsError(f"{where}: {first['msg']}{given}") from None
