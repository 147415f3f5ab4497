"""Operator settings, read once from the environment (flags of `helios operator` set the same)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from pydantic import ValidationError

from helios_operator.spec import HeliosDeploymentSpec, ResourceRequirements

DEFAULT_WORKER_IMAGE = "ghcr.io/helios-llm/helios-worker:0.1.0"
WORKER_PORT = 8000


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = float(raw)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {raw!r}")
    return value


@dataclass(frozen=True)
class OperatorConfig:
    """What the operator needs besides each HeliosDeployment's spec.

    HELIOS_OPERATOR_TICK: seconds between reconcile passes per HeliosDeployment (default 5);
      telemetry is scraped at each spec's monitoring.interval, checked on these ticks.
    HELIOS_OPERATOR_EVALUATION_POLL: seconds between polls of evaluation pods (default 5).
    HELIOS_OPERATOR_HTTP_TIMEOUT: seconds for one request to a worker pod (default 3).
    HELIOS_WORKER_IMAGE: worker image when a spec names none.
    HELIOS_DEFAULT_WORKER_RESOURCES: JSON {"requests": {...}, "limits": {...}}, the worker pod
      resources when a spec's worker.resources is empty (the Helm value worker.resources).
    HELIOS_OPERATOR_ENDPOINT_ANNOTATION: "1" lets a pod's `helios.dev/endpoint` annotation
      replace http://<podIP>:8000 (for tests and port-forwarded development; off by default,
      since anyone who may annotate pods could then point the operator elsewhere).
    """

    tick_seconds: float = 5.0
    evaluation_poll_seconds: float = 5.0
    http_timeout_seconds: float = 3.0
    worker_image: str = DEFAULT_WORKER_IMAGE
    allow_endpoint_annotation: bool = False
    worker_port: int = WORKER_PORT
    default_worker_resources: ResourceRequirements = field(default_factory=ResourceRequirements)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        return cls(
            tick_seconds=_float("HELIOS_OPERATOR_TICK", cls.tick_seconds),
            evaluation_poll_seconds=_float("HELIOS_OPERATOR_EVALUATION_POLL", cls.evaluation_poll_seconds),
            http_timeout_seconds=_float("HELIOS_OPERATOR_HTTP_TIMEOUT", cls.http_timeout_seconds),
            worker_image=os.environ.get("HELIOS_WORKER_IMAGE") or DEFAULT_WORKER_IMAGE,
            allow_endpoint_annotation=os.environ.get("HELIOS_OPERATOR_ENDPOINT_ANNOTATION", "") in ("1", "true"),
            default_worker_resources=_resources("HELIOS_DEFAULT_WORKER_RESOURCES"),
        )

    def apply_defaults(self, spec: HeliosDeploymentSpec) -> HeliosDeploymentSpec:
        """``spec`` with the operator's default worker resources when it asks for none."""
        resources = spec.worker.resources
        if resources.requests or resources.limits:
            return spec
        worker = spec.worker.model_copy(update={"resources": self.default_worker_resources})
        return spec.model_copy(update={"worker": worker})


def _resources(name: str) -> ResourceRequirements:
    raw = os.environ.get(name)
    if not raw:
        return ResourceRequirements()
    try:
        return ResourceRequirements.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as error:
        raise ValueError(f'{name} must be JSON like {{"limits": {{"memory": "8Gi"}}}}: {error}') from None
