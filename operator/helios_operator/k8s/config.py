"""Operator settings, read once from the environment (flags of `helios operator` set the same)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from pydantic import ValidationError

from helios_operator.spec import HeliosDeploymentSpec, ResourceRequirements

DEFAULT_WORKER_IMAGE = "ghcr.io/helios-llm/helios-worker:0.1.0"
WORKER_PORT = 8000  # the worker's OpenAI API, probes and metrics (the Service's port)
CONTROL_PORT = 8001  # the worker's control API (/v1/helios/*): the operator only


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
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
    HELIOS_OPERATOR_CONTROL_NETWORK_POLICY: "1" gives each HeliosDeployment a NetworkPolicy that
      admits only the operator's pods to its workers' control port (the OpenAI port stays open);
      it names them by HELIOS_OPERATOR_NAMESPACE and HELIOS_OPERATOR_POD_LABELS (JSON), which the
      chart sets from the operator pod itself.
    HELIOS_OPERATOR_ENDPOINT_ANNOTATION: "1" lets a pod's `helios.dev/endpoint` and
      `helios.dev/control-endpoint` annotations replace http://<podIP>:8000 and :8001 (for tests
      and port-forwarded development; off by default, since anyone who may annotate pods could
      then point the operator elsewhere).
    """

    tick_seconds: float = 5.0
    evaluation_poll_seconds: float = 5.0
    http_timeout_seconds: float = 3.0
    worker_image: str = DEFAULT_WORKER_IMAGE
    allow_endpoint_annotation: bool = False
    worker_port: int = WORKER_PORT
    control_port: int = CONTROL_PORT
    control_peer: ControlPeer | None = None  # set: workers admit only these pods to the control port
    default_worker_resources: ResourceRequirements = field(default_factory=ResourceRequirements)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        return cls(
            tick_seconds=_float("HELIOS_OPERATOR_TICK", cls.tick_seconds),
            evaluation_poll_seconds=_float("HELIOS_OPERATOR_EVALUATION_POLL", cls.evaluation_poll_seconds),
            http_timeout_seconds=_float("HELIOS_OPERATOR_HTTP_TIMEOUT", cls.http_timeout_seconds),
            worker_image=os.environ.get("HELIOS_WORKER_IMAGE") or DEFAULT_WORKER_IMAGE,
            allow_endpoint_annotation=os.environ.get("HELIOS_OPERATOR_ENDPOINT_ANNOTATION", "") in ("1", "true"),
            control_peer=ControlPeer.from_env(),
            default_worker_resources=_resources("HELIOS_DEFAULT_WORKER_RESOURCES"),
        )

    def apply_defaults(self, spec: HeliosDeploymentSpec) -> HeliosDeploymentSpec:
        """``spec`` with the operator's default worker resources when it asks for none."""
        resources = spec.worker.resources
        if resources.requests or resources.limits:
            return spec
        worker = spec.worker.model_copy(update={"resources": self.default_worker_resources})
        return spec.model_copy(update={"worker": worker})


@dataclass(frozen=True)
class ControlPeer:
    """The operator's own pods, the only peers a worker's control port admits."""

    namespace: str
    pod_labels: dict[str, str]

    @classmethod
    def from_env(cls) -> ControlPeer | None:
        if os.environ.get("HELIOS_OPERATOR_CONTROL_NETWORK_POLICY", "") not in ("1", "true"):
            return None
        namespace = os.environ.get("HELIOS_OPERATOR_NAMESPACE", "")
        try:
            labels = json.loads(os.environ.get("HELIOS_OPERATOR_POD_LABELS", ""))
        except ValueError:
            labels = None
        is_labels = isinstance(labels, dict) and labels and all(isinstance(v, str) for v in labels.values())
        if not namespace or not is_labels:
            raise ValueError(
                "HELIOS_OPERATOR_CONTROL_NETWORK_POLICY needs HELIOS_OPERATOR_NAMESPACE and HELIOS_OPERATOR_POD_LABELS "
                '(JSON like {"app.kubernetes.io/name": "helios"}) naming the operator\'s pods; without them the '
                "policy would lock the operator out of its workers"
            )
        return cls(namespace, dict(labels))


def _resources(name: str) -> ResourceRequirements:
    raw = os.environ.get(name)
    if not raw:
        return ResourceRequirements()
    try:
        return ResourceRequirements.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as error:
        raise ValueError(f'{name} must be JSON like {{"limits": {{"memory": "8Gi"}}}}: {error}') from None
