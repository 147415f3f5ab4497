"""``spec.worker.podTemplate``: what a user adds to the pods HELIOS generates, validated.

Like the PodSpec fields of a KServe predictor: scheduling (nodeSelector, tolerations, affinity,
topologySpreadConstraints, priority, runtime and scheduler), pull secrets, a pod-level
securityContext, volumes, sidecars and init containers, and pod labels and annotations. The
same overlay goes onto every evaluation pod and onto the serving Deployment's pod template
(``k8s/overlay.py`` merges it). Kubernetes objects whose full schema would be huge (affinity, a
toleration, a container, a volume) are kept as given, with only the fields HELIOS depends on
checked here; the API server checks the rest when the pod is created. An overlay that would
fight HELIOS (a container named ``worker``, a volume named like HELIOS's, a label its selectors
use) is rejected with its field path.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from helios_contracts.candidate import DnsLabel, SpecModel
from helios_contracts.model_uris import PVC_ROOT

# Names HELIOS gives the pods it generates; an overlay may not reuse them.
WORKER_CONTAINER = "worker"
MODELS_VOLUME = "models"
TMP_VOLUME = "tmp"
SHM_VOLUME = "dshm"
EXITS_VOLUME = "exits"  # the calibration claim (<name>-exits), where calibrate candidates' sidecars are
EXITS_CLAIM_VOLUME = "exits-claim"  # the claim an exits: pvc://CLAIM/PATH names, when no model uses it
TEXTS_VOLUME = "calibration-texts"  # a calibration Job's texts ConfigMap
RESERVED_VOLUMES = frozenset({MODELS_VOLUME, TMP_VOLUME, SHM_VOLUME, EXITS_VOLUME, EXITS_CLAIM_VOLUME, TEXTS_VOLUME})
# pvc:// candidates mount their claims as pvc-0, pvc-1, ... (see claim_volume_name).
CLAIM_VOLUME = re.compile(r"^pvc-\d+$")
MODEL_MOUNT = "/models"
TMP_MOUNT = "/tmp"
SHM_MOUNT = "/dev/shm"
EXITS_MOUNT = "/mnt/exits"
TEXTS_MOUNT = "/etc/helios/calibration-texts"
RESERVED_MOUNTS = (MODEL_MOUNT, TMP_MOUNT, SHM_MOUNT, PVC_ROOT, EXITS_MOUNT, TEXTS_MOUNT)
# HELIOS's own label and annotation keys: its selectors, the Service and evaluation lookups use
# helios.dev/*, and the app.kubernetes.io keys it sets identify its pods.
HELIOS_KEY_PREFIX = "helios.dev/"
HELIOS_LABELS = frozenset({"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by"})

# RFC 1123 subdomain: Secret, RuntimeClass and PriorityClass names.
ObjectName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    ),
]
# Any Kubernetes object, stored as given: the CRD keeps its fields instead of pruning them.
KubeObject = Annotated[dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})]
_KEPT_AS_GIVEN = ConfigDict(extra="allow", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})


def claim_volume_name(number: int) -> str:
    return f"pvc-{number}"


class LocalObjectReference(SpecModel):
    name: ObjectName = Field(description="Secret in the HeliosDeployment's namespace.")


class ExtraContainer(SpecModel):
    """A Kubernetes Container kept as given (its full schema would be huge): only `name` and `image` are checked."""

    model_config = _KEPT_AS_GIVEN

    name: DnsLabel = Field(description=f"Container name, unique in the pod; not `{WORKER_CONTAINER}` (HELIOS's).")
    image: str = Field(min_length=1, description="Container image.")

    @field_validator("name")
    @classmethod
    def _not_the_worker(cls, name: str) -> str:
        if name == WORKER_CONTAINER:
            raise ValueError(f"{name!r} is the name of HELIOS's worker container; choose another name")
        return name


class ExtraVolume(SpecModel):
    """A Kubernetes Volume kept as given: `name` is checked, the source (configMap, secret, csi, ...) passes."""

    model_config = _KEPT_AS_GIVEN

    name: DnsLabel = Field(
        description="Volume name, unique in the pod; not one of HELIOS's (`models`, `tmp`, `dshm`, `pvc-N`, "
        "`exits`, `exits-claim`, `calibration-texts`)."
    )

    @field_validator("name")
    @classmethod
    def _not_helios_volume(cls, name: str) -> str:
        if name in RESERVED_VOLUMES or CLAIM_VOLUME.match(name):
            raise ValueError(f"{name!r} is the name of a volume HELIOS mounts; choose another name")
        return name


class ExtraVolumeMount(SpecModel):
    """A Kubernetes VolumeMount kept as given: `name` and `mountPath` are checked, readOnly, subPath, ... pass."""

    model_config = _KEPT_AS_GIVEN

    name: DnsLabel = Field(description="A volume of podTemplate.spec.volumes.")
    mount_path: str = Field(
        pattern=r"^/",
        description=f"Absolute path in the worker container; not at or under HELIOS's own mounts "
        f"({', '.join(RESERVED_MOUNTS)}).",
    )

    @field_validator("mount_path")
    @classmethod
    def _not_a_helios_mount(cls, path: str) -> str:
        mount = PurePosixPath(path)
        for reserved in map(PurePosixPath, RESERVED_MOUNTS):
            # Either way round a mount hides HELIOS's: at /dev it would cover /dev/shm too.
            if mount.is_relative_to(reserved) or reserved.is_relative_to(mount):
                raise ValueError(f"{path!r} overlaps {reserved}, where HELIOS mounts its own volume")
        return path


class PodMetadata(SpecModel):
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels added to every pod. Keys HELIOS sets (`helios.dev/*`, app.kubernetes.io/name, "
        "instance, managed-by) are rejected: its selectors and lookups depend on them.",
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Annotations added to every pod (e.g. for a service mesh or a log shipper). "
        "`helios.dev/*` keys are HELIOS's and rejected.",
    )

    @field_validator("labels")
    @classmethod
    def _no_helios_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key in labels:
            if key.startswith(HELIOS_KEY_PREFIX) or key in HELIOS_LABELS:
                raise ValueError(f"{key!r} is a label HELIOS sets on its pods and selects them by; choose another key")
        return labels

    @field_validator("annotations")
    @classmethod
    def _no_helios_annotations(cls, annotations: dict[str, str]) -> dict[str, str]:
        for key in annotations:
            if key.startswith(HELIOS_KEY_PREFIX):
                raise ValueError(f"{key!r} is in HELIOS's annotation prefix {HELIOS_KEY_PREFIX}; choose another key")
        return annotations


class PodSpecOverlay(SpecModel):
    """Pod fields added to HELIOS's: lists appended after its entries, maps merged, single values set."""

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must run on, e.g. {nvidia.com/gpu.product: H100}."
    )
    tolerations: list[KubeObject] = Field(
        default_factory=list,
        description="Kubernetes Tolerations (kept as given), appended after HELIOS's own (a GPU pod "
        "tolerates nvidia.com/gpu:NoSchedule).",
    )
    affinity: KubeObject | None = Field(
        default=None,
        description="A Kubernetes Affinity (nodeAffinity, podAffinity, podAntiAffinity), kept as given: "
        "its full schema would be huge. HELIOS sets none.",
    )
    topology_spread_constraints: list[KubeObject] = Field(
        default_factory=list, description="Kubernetes TopologySpreadConstraints (kept as given)."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, description="Secrets for pulling the worker and sidecar images."
    )
    runtime_class_name: ObjectName | None = Field(
        default=None, description="RuntimeClass of the pods, e.g. `nvidia`. Unset: the cluster's default."
    )
    priority_class_name: ObjectName | None = Field(
        default=None, description="PriorityClass of the pods. Unset: the cluster's default priority."
    )
    scheduler_name: str | None = Field(
        default=None, min_length=1, description="Scheduler of the pods. Unset: the default scheduler."
    )
    security_context: KubeObject | None = Field(
        default=None,
        description="A Kubernetes PodSecurityContext (kept as given), merged key by key onto HELIOS's "
        "(runAsNonRoot, runAsUser/runAsGroup/fsGroup 1000, seccompProfile RuntimeDefault): a key given "
        "here replaces HELIOS's, the others stay.",
    )
    volumes: list[ExtraVolume] = Field(
        default_factory=list,
        description="Volumes appended after HELIOS's, for the containers below (or worker.volumeMounts).",
    )
    containers: list[ExtraContainer] = Field(
        default_factory=list, description="Sidecar containers, appended after the worker container."
    )
    init_containers: list[ExtraContainer] = Field(
        default_factory=list, description="Init containers, run in order before the worker starts."
    )

    @model_validator(mode="after")
    def _names_unique(self) -> PodSpecOverlay:
        for kind, names in (
            ("container", [c.name for c in (*self.containers, *self.init_containers)]),
            ("volume", [v.name for v in self.volumes]),
        ):
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"{kind} name {repeated[0]!r} is used more than once")
        return self


class PodTemplate(SpecModel):
    """The overlay on every pod HELIOS generates, shaped like a Kubernetes PodTemplateSpec."""

    metadata: PodMetadata = Field(default_factory=PodMetadata, description="Labels and annotations of the pods.")
    spec: PodSpecOverlay = Field(default_factory=PodSpecOverlay, description="Pod fields added to HELIOS's.")
