"""Child objects of a HeliosDeployment, as pure functions of its spec and the current decision.

Every builder returns a plain manifest with its ownerReference set, so deleting the
HeliosDeployment garbage-collects it. The worker is configured through environment variables
(HELIOS_MODEL, HELIOS_LAYERS, HELIOS_EXIT_THRESHOLD, HELIOS_MODE, ...), the contract of
`helios serve`. HELIOS_MODEL is the candidate's model reference; HELIOS_MODEL_NAME its
candidate name, which the worker uses as the ``model`` label of its metrics and reports.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from helios_contracts.memory_model import MAX_NUM_SEQS
from helios_contracts.model_uris import PVC_ROOT, split_pvc
from helios_contracts.reports import EvaluationReport
from helios_operator.heliosstatus import HELIOS_STATUS_KIND, HeliosStatusReport
from helios_operator.k8s.config import CONTROL_PORT, WORKER_PORT
from helios_operator.k8s.overlay import overlay_pod
from helios_operator.podtemplate import (
    EXITS_CLAIM_VOLUME,
    EXITS_MOUNT,
    EXITS_VOLUME,
    MODEL_MOUNT,
    MODELS_VOLUME,
    SHM_MOUNT,
    SHM_VOLUME,
    TEXTS_MOUNT,
    TEXTS_VOLUME,
    TMP_MOUNT,
    TMP_VOLUME,
    WORKER_CONTAINER,
    claim_volume_name,
)
from helios_operator.spec import API_VERSION, Candidate, HeliosDeploymentSpec, ResourceRequirements

Manifest = dict[str, Any]

LABEL_DEPLOYMENT = "helios.dev/deployment"
LABEL_ROLE = "helios.dev/role"
LABEL_CANDIDATE = "helios.dev/candidate"
LABEL_ROUND = "helios.dev/round"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "helios-operator"
ROLE_SERVE = "serve"
ROLE_EVALUATE = "evaluate"
ROLE_SHADOW = "shadow"
ROLE_CALIBRATE = "calibrate"
ENDPOINT_ANNOTATION = "helios.dev/endpoint"
CONTROL_ENDPOINT_ANNOTATION = "helios.dev/control-endpoint"
GPU_RESOURCE = "nvidia.com/gpu"
REPORTS_KEY = "reports.json"
# Loading weights (or downloading them) can take long; the startup probe allows 30 minutes.
STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURE_THRESHOLD = 180
RECENT_PROMPTS_KEPT = 100


def owner_reference(owner: Mapping[str, Any]) -> Manifest:
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", API_VERSION),
        "kind": owner.get("kind", "HeliosDeployment"),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(name: str, owner: Mapping[str, Any], labels: Mapping[str, str]) -> Manifest:
    return {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": dict(labels),
        "ownerReferences": [owner_reference(owner)],
    }


def base_labels(deployment: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "helios-worker",
        "app.kubernetes.io/instance": deployment,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_DEPLOYMENT: deployment,
    }


def serving_selector(deployment: str) -> dict[str, str]:
    return {LABEL_DEPLOYMENT: deployment, LABEL_ROLE: ROLE_SERVE}


def selector_string(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def evaluation_selector(deployment: str, round_: int | None = None) -> dict[str, str]:
    labels = {LABEL_DEPLOYMENT: deployment, LABEL_ROLE: ROLE_EVALUATE}
    return labels if round_ is None else {**labels, LABEL_ROUND: str(round_)}


def evaluation_pod_name(deployment: str, round_: int, candidate: str) -> str:
    return f"{deployment}-eval-{round_}-{candidate}"


def reports_configmap_name(deployment: str) -> str:
    return f"{deployment}-evaluation"


# --- worker pod template ----------------------------------------------------------------------


def role_resources(spec: HeliosDeploymentSpec, role: str = ROLE_SERVE) -> ResourceRequirements:
    """A worker pod's resources by its role: the worker's; for evaluation pods ``evaluation.resources``
    if set; for calibration Jobs ``calibration.resources``, else the evaluation pods'."""
    resources = spec.worker.resources
    if role in (ROLE_EVALUATE, ROLE_CALIBRATE) and spec.evaluation.resources is not None:
        resources = spec.evaluation.resources
    if role == ROLE_CALIBRATE and spec.calibration.resources is not None:
        resources = spec.calibration.resources
    return resources


def wants_gpu(spec: HeliosDeploymentSpec, role: str = ROLE_SERVE) -> bool:
    resources = role_resources(spec, role)
    return any(GPU_RESOURCE in values for values in (resources.limits, resources.requests) if values)


def placement_env(spec: HeliosDeploymentSpec) -> dict[str, str]:
    """Device, dtype and memory budget of a worker, from its resources and the spec.

    A pod asking for ``nvidia.com/gpu`` serves on CUDA in bf16 (the worker's ``auto`` dtype);
    the budget is ``spec.memoryBudget``, else what the worker finds free on its device. The
    cache holds as many sequences as the budget allows, up to MAX_NUM_SEQS, at
    ``spec.contextTokens`` each: the numbers the policy predicted with.
    """
    return {
        "HELIOS_DEVICE": "cuda" if wants_gpu(spec) else "cpu",
        "HELIOS_DTYPE": "auto",
        "HELIOS_MEMORY_BUDGET": str(spec.memory_budget) if spec.memory_budget is not None else "auto",
        "HELIOS_MAX_SEQ_LEN": str(spec.context_tokens),
        "HELIOS_MAX_BATCH_SIZE": str(MAX_NUM_SEQS),
    }


def worker_env(
    spec: HeliosDeploymentSpec, candidate: Candidate, extra: Mapping[str, str], deployment: str | None = None
) -> list[Manifest]:
    """The worker container's env; with ``deployment``, the control token from its Secret."""
    env = {
        "HELIOS_MODEL": candidate.model,
        "HELIOS_MODEL_NAME": candidate.name,
        "HELIOS_EXIT_THRESHOLD": str(spec.exit.threshold),
        "HELIOS_PORT": str(WORKER_PORT),
        "HELIOS_CONTROL_PORT": str(CONTROL_PORT),
        "HF_HOME": f"{MODEL_MOUNT}/hf",
        **({"HELIOS_MODEL_REVISION": candidate.revision} if candidate.revision else {}),
        **({"HELIOS_MIN_EXIT_LAYER": str(spec.exit.min_exit_layer)} if spec.exit.min_exit_layer else {}),
        **({"HELIOS_EXIT_GATE": spec.exit.gate} if spec.exit.gate != "none" else {}),
        **placement_env(spec),
        **extra,
    }
    variables: list[Manifest] = [{"name": key, "value": value} for key, value in env.items()]
    if deployment is not None:
        # The control API's token, from the Secret the operator keeps per HeliosDeployment (never in the spec).
        control = {"name": control_secret_name(deployment), "key": CONTROL_TOKEN_KEY}
        variables.append({"name": "HELIOS_CONTROL_TOKEN", "valueFrom": {"secretKeyRef": control}})
    secret = spec.worker.hf_token_secret_ref
    if secret is not None:
        variables.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}})
    # The user's own variables come last, so they can override ours deliberately.
    variables += [var.manifest() for var in spec.worker.env]
    return variables


def _resources(spec: HeliosDeploymentSpec, role: str = ROLE_SERVE) -> Manifest:
    """The worker container's resources (``role_resources``) as a manifest."""
    resources = role_resources(spec, role)
    return {
        key: dict(values) for key, values in (("requests", resources.requests), ("limits", resources.limits)) if values
    }


def model_claims(spec: HeliosDeploymentSpec) -> list[str]:
    """PersistentVolumeClaims that candidates name as ``pvc://CLAIM/PATH``, in order of first use."""
    claims: list[str] = []
    for candidate in spec.candidates:
        if candidate.model.startswith("pvc://"):
            claim, _ = split_pvc(candidate.model)
            if claim not in claims:
                claims.append(claim)
    return claims


_BINARY_SUFFIXES = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))
_DECIMAL_SUFFIXES = (("E", 10**18), ("P", 10**15), ("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3))


def quantity_text(num_bytes: int) -> str:
    """Bytes as a quantity in the API server's canonical form: 2**30 -> '1Gi', 2*10**9 -> '2G'.

    The server re-serialises every quantity it stores (the largest suffix that divides exactly,
    in the spelling's own base), so any other spelling would read back as drift on every pass.
    """
    spellings = [str(num_bytes)]
    for suffixes in (_BINARY_SUFFIXES, _DECIMAL_SUFFIXES):
        exact = [(suffix, factor) for suffix, factor in suffixes if num_bytes and num_bytes % factor == 0]
        spellings += [f"{num_bytes // factor}{suffix}" for suffix, factor in exact[:1]]
    return min(spellings, key=len)


def _volumes(spec: HeliosDeploymentSpec) -> list[Manifest]:
    volume = spec.worker.model_volume
    if volume.claim_name is not None:
        models: Manifest = {"name": MODELS_VOLUME, "persistentVolumeClaim": {"claimName": volume.claim_name}}
    else:
        size = volume.cache_size_limit
        empty: Manifest = {} if size is None else {"sizeLimit": quantity_text(size)}
        models = {"name": MODELS_VOLUME, "emptyDir": empty}
    claims = [
        {"name": claim_volume_name(number), "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        for number, claim in enumerate(model_claims(spec))
    ]
    # PyTorch needs more shared memory than the container runtime's 64 MB /dev/shm (see WorkerSpec.shm_size).
    shm = [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": quantity_text(spec.worker.shm_size)}}]
    return [models, {"name": TMP_VOLUME, "emptyDir": {}}, *(shm if spec.worker.shm_size else []), *claims]


def _claim_mounts(spec: HeliosDeploymentSpec) -> list[Manifest]:
    """Each pvc:// claim at PVC_ROOT/CLAIM, where the worker resolves pvc://CLAIM/PATH."""
    return [
        {"name": claim_volume_name(number), "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}
        for number, claim in enumerate(model_claims(spec))
    ]


def _worker_mounts(spec: HeliosDeploymentSpec) -> list[Manifest]:
    """HELIOS's mounts, then the user's (worker.volumeMounts, of podTemplate volumes)."""
    is_read_only = spec.worker.model_volume.claim_name is not None
    models = {"name": MODELS_VOLUME, "mountPath": MODEL_MOUNT, "readOnly": is_read_only}
    shm = [{"name": SHM_VOLUME, "mountPath": SHM_MOUNT}] if spec.worker.shm_size else []
    user = [mount.model_dump(mode="json", by_alias=True, exclude_defaults=True) for mount in spec.worker.volume_mounts]
    return [models, {"name": TMP_VOLUME, "mountPath": TMP_MOUNT}, *shm, *_claim_mounts(spec), *user]


def _probe(path: str, period: int, failures: int) -> Manifest:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures}


def worker_pod_spec(
    spec: HeliosDeploymentSpec, image: str, env: list[Manifest], restart: str, role: str = ROLE_SERVE
) -> Manifest:
    """A hardened worker pod: non-root, read-only root filesystem with a writable /tmp, no capabilities."""
    container: Manifest = {
        "name": WORKER_CONTAINER,
        "image": spec.worker.image or image,
        "command": ["helios-worker", "serve"],
        "ports": [
            {"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"},
            {"name": "control", "containerPort": CONTROL_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "resources": (resources := _resources(spec, role)),
        "startupProbe": _probe("/health", STARTUP_PERIOD_SECONDS, STARTUP_FAILURE_THRESHOLD),
        "readinessProbe": _probe("/ready", 5, 3),
        "livenessProbe": _probe("/health", 10, 3),
        "volumeMounts": _worker_mounts(spec),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod: Manifest = {
        "restartPolicy": restart,
        # Workers never call the Kubernetes API: no ServiceAccount token in their pods.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": _volumes(spec),
    }
    if any(GPU_RESOURCE in values for values in resources.values()):
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return pod


DRAIN_MARGIN_SECONDS = 10
IMAGE_UID = 10001  # the worker image's user (worker/Dockerfile): the pod runs as the same uid


def with_drain(spec: HeliosDeploymentSpec, pod: Manifest) -> Manifest:
    """A serving pod that stops without dropping a request: a preStop sleep while its endpoint goes
    (readiness is already false for a terminating pod), then SIGTERM, which drains in-flight
    requests, all within a grace period longer than both."""
    delay = spec.worker.pre_stop_delay
    pod["containers"][0]["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", f"{delay:g}"]}}}
    pod["terminationGracePeriodSeconds"] = math.ceil(delay + spec.worker.drain_timeout) + DRAIN_MARGIN_SECONDS
    return pod


def control_policy_name(deployment: str) -> str:
    return f"{deployment}-control"


def build_control_network_policy(
    owner: Mapping[str, Any], peer_namespace: str, peer_labels: Mapping[str, str]
) -> Manifest:
    """Ingress to every worker pod of ``owner`` (serving, evaluation, shadow): the OpenAI port from
    anywhere, the control port only from the operator's pods (``peer_labels`` in ``peer_namespace``)."""
    name = owner["metadata"]["name"]
    operator_pods = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": peer_namespace}},
        "podSelector": {"matchLabels": dict(peer_labels)},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(control_policy_name(name), owner, base_labels(name)),
        "spec": {
            "podSelector": {"matchLabels": base_labels(name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"port": WORKER_PORT, "protocol": "TCP"}]},
                {"from": [operator_pods], "ports": [{"port": CONTROL_PORT, "protocol": "TCP"}]},
            ],
        },
    }


def build_pdb(owner: Mapping[str, Any]) -> Manifest:
    """At most one serving pod voluntarily disrupted at a time (only made when replicas > 1: with one
    replica a PDB would block node drains forever)."""
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(name, owner, base_labels(name)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": serving_selector(name)}},
    }


def candidate_named(spec: HeliosDeploymentSpec, name: str) -> Candidate:
    for candidate in spec.candidates:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no candidate named {name!r} in the spec")


# --- calibrated exits ---------------------------------------------------------------------------


def exits_claim_name(deployment: str) -> str:
    """The PersistentVolumeClaim calibration Jobs write sidecars to, one per HeliosDeployment."""
    return f"{deployment}-exits"


def exits_path(candidate: Candidate) -> str | None:
    """Where a worker finds the candidate's calibrated exits, or None without any.

    ``calibrate``: its Job's output on the calibration claim; ``exits``: the reference as a path in the
    container (pvc:// under PVC_ROOT/CLAIM, file:// as is, a relative path inside the model volume).
    """
    if candidate.calibrate is not None:
        return f"{EXITS_MOUNT}/{candidate.name}"
    ref = candidate.exits
    if ref is None:
        return None
    if ref.startswith("pvc://"):
        claim, path = split_pvc(ref)
        return f"{PVC_ROOT}/{claim}/{path}"
    if ref.startswith("file://"):
        return ref.removeprefix("file://")
    return ref if ref.startswith("/") else f"{MODEL_MOUNT}/{ref.strip('/')}"


def evaluated_candidate(candidate: Candidate) -> Manifest:
    """The candidate as its evaluation pod's worker reads it (HELIOS_EVAL_CANDIDATES), exits as a path."""
    contract = candidate.contract(exits_path(candidate))
    return contract.model_dump(by_alias=True, exclude_none=True)


def with_exits_volumes(pod: Manifest, spec: HeliosDeploymentSpec, candidate: Candidate, deployment: str) -> Manifest:
    """Mount, read-only, the claim that holds ``candidate``'s calibrated exits (if it has any).

    Only the pods of that candidate mount it, so a switch to a candidate without exits drops it.
    A pvc:// claim that a model reference already mounts is not mounted twice.
    """
    claim = None
    if candidate.calibrate is not None:
        claim, volume, mount = exits_claim_name(deployment), EXITS_VOLUME, EXITS_MOUNT
    elif candidate.exits is not None and candidate.exits.startswith("pvc://"):
        name, _ = split_pvc(candidate.exits)
        if name not in model_claims(spec):
            claim, volume, mount = name, EXITS_CLAIM_VOLUME, f"{PVC_ROOT}/{name}"
    if claim is None:
        return pod
    pod["volumes"].append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    pod["containers"][0]["volumeMounts"].append({"name": volume, "mountPath": mount, "readOnly": True})
    return pod


def build_exits_claim(owner: Mapping[str, Any], spec: HeliosDeploymentSpec) -> Manifest:
    """The calibration claim: made once (a claim's spec is immutable), owned by the HeliosDeployment."""
    name = owner["metadata"]["name"]
    volume = spec.calibration.volume
    claim: Manifest = {"accessModes": list(volume.access_modes), "resources": {"requests": {"storage": volume.size}}}
    if volume.storage_class_name is not None:
        claim["storageClassName"] = volume.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(exits_claim_name(name), owner, base_labels(name)),
        "spec": claim,
    }


def calibration_job_name(deployment: str, candidate: str) -> str:
    return f"{deployment}-calibrate-{candidate}"


def calibration_selector(deployment: str, candidate: str) -> dict[str, str]:
    return {LABEL_DEPLOYMENT: deployment, LABEL_ROLE: ROLE_CALIBRATE, LABEL_CANDIDATE: candidate}


def calibration_texts_path(candidate: Candidate) -> str:
    """Where the Job's ``--texts`` points: the ConfigMap key's file, or the path on the model volume."""
    texts = candidate.calibrate.texts  # type: ignore[union-attr]
    if texts.config_map_ref is not None:
        return f"{TEXTS_MOUNT}/{texts.config_map_ref.key}"
    path = texts.path or ""
    return path if path.startswith("/") else f"{MODEL_MOUNT}/{path.strip('/')}"


def build_calibration_job(
    owner: Mapping[str, Any], spec: HeliosDeploymentSpec, candidate: Candidate, image: str
) -> Manifest:
    """A Job of the worker image that runs ``helios-worker calibrate`` for ``candidate`` once.

    It writes the sidecar to the calibration claim at EXITS_MOUNT/<candidate>; no retries
    (backoffLimit 0: a fit that failed on this text fails again) and a deadline
    (``spec.calibration.timeout``). A texts ConfigMap is mounted whole and ``optional``, so a
    missing ConfigMap or key fails the Job with the worker's message instead of leaving its pod
    waiting for the volume; the container's log tail becomes its termination message.
    """
    deployment = owner["metadata"]["name"]
    settings = candidate.calibrate
    if settings is None:
        raise ValueError(f"candidate {candidate.name} has no calibrate settings")
    pod = worker_pod_spec(spec, image, worker_env(spec, candidate, {}), restart="Never", role=ROLE_CALIBRATE)
    container = pod["containers"][0]
    for key in ("ports", "startupProbe", "readinessProbe", "livenessProbe"):
        container.pop(key, None)
    container["command"] = [
        "helios-worker",
        "calibrate",
        "--model",
        candidate.reference,
        "--texts",
        calibration_texts_path(candidate),
        "--tokens",
        str(settings.tokens),
        "--exit-layers",
        settings.exit_layers,
        "--out",
        f"{EXITS_MOUNT}/{candidate.name}",
        "--device",
        "cuda" if wants_gpu(spec, ROLE_CALIBRATE) else "cpu",
    ]
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    container["volumeMounts"].append({"name": EXITS_VOLUME, "mountPath": EXITS_MOUNT})
    pod["volumes"].append({"name": EXITS_VOLUME, "persistentVolumeClaim": {"claimName": exits_claim_name(deployment)}})
    if (ref := settings.texts.config_map_ref) is not None:
        container["volumeMounts"].append({"name": TEXTS_VOLUME, "mountPath": TEXTS_MOUNT, "readOnly": True})
        pod["volumes"].append({"name": TEXTS_VOLUME, "configMap": {"name": ref.name, "optional": True}})
    labels = {**base_labels(deployment), **calibration_selector(deployment, candidate.name)}
    template = overlay_pod({"labels": labels}, pod, spec.worker.pod_template)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(calibration_job_name(deployment, candidate.name), owner, labels),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, math.ceil(spec.calibration.timeout)),
            "template": template,
        },
    }


# --- children ----------------------------------------------------------------------------------


def build_evaluation_pod(
    owner: Mapping[str, Any],
    spec: HeliosDeploymentSpec,
    candidate: Candidate,
    round_: int,
    prompts: Iterable[str],
    image: str,
) -> Manifest:
    """One evaluation pod: runs the candidate at full depth over the prompts, then serves its report."""
    deployment = owner["metadata"]["name"]
    labels = {**base_labels(deployment), **evaluation_selector(deployment, round_), LABEL_CANDIDATE: candidate.name}
    extra = {
        "HELIOS_MODE": "evaluate",
        "HELIOS_EVAL_CANDIDATES": json.dumps([evaluated_candidate(candidate)]),
        "HELIOS_EVAL_PROMPTS": json.dumps(list(prompts)[: spec.evaluation.prompts_per_candidate]),
        "HELIOS_MAX_NEW_TOKENS": str(spec.evaluation.max_new_tokens),
        "HELIOS_DEVICE": "cuda" if wants_gpu(spec, ROLE_EVALUATE) else "cpu",
    }
    if spec.evaluation.time_budget is not None:
        extra["HELIOS_EVAL_TIME_BUDGET"] = f"{spec.evaluation.time_budget:g}"
    pod = overlay_pod(
        _metadata(evaluation_pod_name(deployment, round_, candidate.name), owner, labels),
        with_exits_volumes(
            worker_pod_spec(
                spec, image, worker_env(spec, candidate, extra, deployment), restart="OnFailure", role=ROLE_EVALUATE
            ),
            spec,
            candidate,
            deployment,
        ),
        spec.worker.pod_template,
    )
    return {"apiVersion": "v1", "kind": "Pod", **pod}


def build_deployment(
    owner: Mapping[str, Any],
    spec: HeliosDeploymentSpec,
    candidate: Candidate,
    layers: int,
    image: str,
    exit_histogram: Sequence[int] | None = None,
) -> Manifest:
    """The serving Deployment: the chosen candidate with its first ``layers`` layers.

    ``exit_histogram`` (the candidate's evaluation) lets the workers place their exit tests
    where they pay; without it they exit at the last loaded layer only.
    """
    name = owner["metadata"]["name"]
    selector = serving_selector(name)
    template_labels = {**base_labels(name), **selector, LABEL_CANDIDATE: candidate.name}
    # The workers keep recent prompts (a count) only when a reassessment evaluates on real traffic:
    # they are users' prompts, so nothing keeps them otherwise.
    recent = spec.evaluation.prompts.kind == "recentTraffic"
    record = max(RECENT_PROMPTS_KEPT, spec.evaluation.prompts_per_candidate) if recent else 0
    # The layer count is not in the template: a layer change is an HTTP call to each live pod plus this
    # ConfigMap, which the pods that start later read (see build_serving_configmap); no rollout.
    extra = {
        "HELIOS_MODE": "serve",
        "HELIOS_RECORD_PROMPTS": str(record),
        "HELIOS_DRAIN_SECONDS": f"{spec.worker.drain_timeout:g}",
    }
    if exit_histogram:
        extra["HELIOS_EXIT_HISTOGRAM"] = ",".join(map(str, exit_histogram))
    if (exits := exits_path(candidate)) is not None:
        extra["HELIOS_EXITS"] = exits
    if spec.monitoring.shadow.fraction > 0:
        extra["HELIOS_SHADOW_FRACTION"] = str(spec.monitoring.shadow.fraction)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, owner, {**base_labels(name), LABEL_ROLE: ROLE_SERVE}),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector},
            # A new pod joins before an old one leaves, so a model switch drops no requests.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": overlay_pod(
                {"labels": template_labels},
                with_drain(
                    spec,
                    with_exits_volumes(
                        worker_pod_spec(
                            spec, image, [layers_env(name), *worker_env(spec, candidate, extra, name)], restart="Always"
                        ),
                        spec,
                        candidate,
                        name,
                    ),
                ),
                spec.worker.pod_template,
            ),
        },
    }


def shadow_selector(deployment: str) -> dict[str, str]:
    return {LABEL_DEPLOYMENT: deployment, LABEL_ROLE: ROLE_SHADOW}


def shadow_deployment_name(deployment: str) -> str:
    return f"{deployment}-shadow"


def build_shadow_deployment(
    owner: Mapping[str, Any], spec: HeliosDeploymentSpec, candidate: Candidate, layers_total: int, image: str
) -> Manifest:
    """The shadow scorer: one worker of the served candidate with all its layers, behind no Service.

    It only replays the sampled share of the traffic (``monitoring.shadow.fraction``), so one
    replica serves any number of serving replicas; loading the skipped layers in the serving pods
    instead would take back the memory that partial loading turned into batch.
    """
    name = owner["metadata"]["name"]
    selector = shadow_selector(name)
    extra = {"HELIOS_MODE": "serve", "HELIOS_LAYERS": str(layers_total), "HELIOS_EXIT_LAYERS": "none"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(shadow_deployment_name(name), owner, {**base_labels(name), LABEL_ROLE: ROLE_SHADOW}),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "Recreate"},
            "template": overlay_pod(
                {"labels": {**base_labels(name), **selector, LABEL_CANDIDATE: candidate.name}},
                worker_pod_spec(spec, image, worker_env(spec, candidate, extra, name), restart="Always"),
                spec.worker.pod_template,
            ),
        },
    }


CONTROL_TOKEN_KEY = "token"


def control_secret_name(deployment: str) -> str:
    return f"{deployment}-control"


def build_control_secret(owner: Mapping[str, Any], token: str) -> Manifest:
    """The control token of one HeliosDeployment's workers: made once by the operator, mounted in its pods."""
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(control_secret_name(name), owner, base_labels(name)),
        "data": {CONTROL_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def serving_configmap_name(deployment: str) -> str:
    return f"{deployment}-serving"


LAYERS_KEY = "layers"


def layers_env(deployment: str) -> Manifest:
    """HELIOS_LAYERS from the serving ConfigMap, resolved when a container starts."""
    ref = {"name": serving_configmap_name(deployment), "key": LAYERS_KEY}
    return {"name": "HELIOS_LAYERS", "valueFrom": {"configMapKeyRef": ref}}


def build_serving_configmap(owner: Mapping[str, Any], layers: int) -> Manifest:
    """The target layer count of the serving pods, outside their template.

    Live pods are brought to it over HTTP (``POST /v1/helios/layers``); a pod that starts later
    (a new replica, a restart) reads it at start through ``layers_env``. Changing it rolls nothing.
    """
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(serving_configmap_name(name), owner, base_labels(name)),
        "data": {LAYERS_KEY: str(layers)},
    }


def build_service(owner: Mapping[str, Any]) -> Manifest:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, owner, base_labels(name)),
        "spec": {
            "selector": serving_selector(name),
            # The OpenAI API only: the control port is reached pod by pod, by the operator.
            "ports": [{"name": "http", "port": WORKER_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_reports_configmap(owner: Mapping[str, Any], reports: Iterable[EvaluationReport], round_: int) -> Manifest:
    """The last evaluation reports, kept so that a restarted operator resumes without re-evaluating."""
    name = owner["metadata"]["name"]
    payload = json.dumps([report.model_dump(mode="json") for report in reports])
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(reports_configmap_name(name), owner, base_labels(name)),
        "data": {REPORTS_KEY: payload, "round": str(round_)},
    }


def partial_reports_configmap_name(deployment: str) -> str:
    return f"{deployment}-evaluation-partial"


def build_partial_reports_configmap(
    owner: Mapping[str, Any], round_: int, reports: Mapping[str, EvaluationReport], stale_keys: Iterable[str] = ()
) -> Manifest:
    """The reports a one-pod-at-a-time round has so far (its finished pods are gone); ``stale_keys``
    (another round's) are set to null, which a merge patch deletes."""
    name = owner["metadata"]["name"]
    data: dict[str, str | None] = {key: None for key in stale_keys}
    data |= {candidate: report.model_dump_json() for candidate, report in reports.items()}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(partial_reports_configmap_name(name), owner, base_labels(name)),
        "data": {**data, "round": str(round_)},
    }


def build_helios_status(owner: Mapping[str, Any], report: HeliosStatusReport) -> Manifest:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": API_VERSION,
        "kind": HELIOS_STATUS_KIND,
        "metadata": _metadata(name, owner, base_labels(name)),
        "spec": {"deployment": name},
        "status": report.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
