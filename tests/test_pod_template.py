"""spec.worker.podTemplate and /dev/shm: what reaches both kinds of pod, what is refused, what the server keeps."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from helios_operator.crds import helios_deployment_crd
from helios_operator.k8s import manifests
from helios_operator.k8s.overlay import overlay_pod
from helios_operator.podtemplate import PodMetadata, PodSpecOverlay, PodTemplate
from helios_operator.spec import HeliosDeploymentSpec, describe_validation_error, parse_quantity
from tests.test_crds import spec_validator

KUBE_VERSION = "1.33.0"  # as in test_helm_chart: an API server version kubernetes-validate has schemas for
OWNER = {
    "apiVersion": "helios.dev/v1alpha1",
    "kind": "HeliosDeployment",
    "metadata": {"name": "demo", "namespace": "ml", "uid": "u-1"},
}
SIDECAR = {
    "name": "log-shipper",
    "image": "fluent/fluent-bit:3.2",
    "args": ["--config", "/etc/fluent/fluent.conf"],
    "volumeMounts": [{"name": "shipper-config", "mountPath": "/etc/fluent"}],
    "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
}
INIT = {"name": "fetch-tokenizer", "image": "busybox:1.36", "command": ["sh", "-c", "true"]}
TOLERATION = {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}
AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["40000"]}]}
            ]
        }
    }
}
SPREAD = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
VOLUME = {"name": "shipper-config", "configMap": {"name": "fluent-bit"}}
# Every field of podTemplate (test_template_sets_every_field keeps this true when fields are added).
TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "ml"}, "annotations": {"sidecar.istio.io/inject": "false"}},
    "spec": {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [TOLERATION],
        "affinity": AFFINITY,
        "topologySpreadConstraints": [SPREAD],
        "imagePullSecrets": [{"name": "registry-cred"}],
        "runtimeClassName": "nvidia",
        "priorityClassName": "llm-serving",
        "schedulerName": "volcano",
        "securityContext": {"fsGroup": 2000, "supplementalGroups": [44]},
        "volumes": [VOLUME],
        "containers": [SIDECAR],
        "initContainers": [INIT],
    },
}
WORKER = {
    "resources": {"limits": {"nvidia.com/gpu": 1}},
    "volumeMounts": [{"name": "shipper-config", "mountPath": "/etc/helios-extra", "readOnly": True}],
    "podTemplate": TEMPLATE,
}


def make_spec(**worker: Any) -> HeliosDeploymentSpec:
    return HeliosDeploymentSpec.model_validate({"candidates": [{"name": "a", "model": "org/a"}], "worker": worker})


def rendered(spec: HeliosDeploymentSpec) -> list[dict[str, Any]]:
    """An evaluation pod and the serving Deployment."""
    return [
        manifests.build_evaluation_pod(OWNER, spec, spec.candidates[0], 1, ["p"], "img"),
        manifests.build_deployment(OWNER, spec, spec.candidates[0], 4, "img"),
    ]


def pods(spec: HeliosDeploymentSpec) -> dict[str, dict[str, Any]]:
    """The evaluation pod and the serving Deployment's pod template, each with its metadata and spec."""
    evaluation, deployment = rendered(spec)
    return {"evaluation": evaluation, "serving": deployment["spec"]["template"]}


def worker_container(pod: dict[str, Any]) -> dict[str, Any]:
    (worker,) = [c for c in pod["spec"]["containers"] if c["name"] == "worker"]
    return worker


def test_template_sets_every_field() -> None:
    def aliases(model: type[PodMetadata] | type[PodSpecOverlay]) -> set[str]:
        return {field.alias or name for name, field in model.model_fields.items()}

    assert set(TEMPLATE["metadata"]) == aliases(PodMetadata)
    assert set(TEMPLATE["spec"]) == aliases(PodSpecOverlay)


@pytest.mark.parametrize("kind", ["evaluation", "serving"])
def test_every_pod_template_field_reaches_the_pod(kind: str) -> None:
    pod = pods(make_spec(**WORKER))[kind]
    spec, overlay = pod["spec"], TEMPLATE["spec"]
    # Lists: HELIOS's entries first, the user's after them.
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, TOLERATION]
    assert [c["name"] for c in spec["containers"]] == ["worker", "log-shipper"] and spec["containers"][1] == SIDECAR
    assert spec["initContainers"] == [INIT]
    assert [v["name"] for v in spec["volumes"]] == ["models", "tmp", "dshm", "shipper-config"]
    assert spec["volumes"][-1] == VOLUME
    assert spec["topologySpreadConstraints"] == [SPREAD]
    assert spec["imagePullSecrets"] == [{"name": "registry-cred"}]
    # Maps and single values.
    assert spec["nodeSelector"] == overlay["nodeSelector"] and spec["affinity"] == AFFINITY
    for key in ("runtimeClassName", "priorityClassName", "schedulerName"):
        assert spec[key] == overlay[key], key
    # securityContext key by key: the user's fsGroup, HELIOS's hardening otherwise.
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,  # the worker image's user
        "runAsGroup": 10001,
        "fsGroup": 2000,
        "supplementalGroups": [44],
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert worker_container(pod)["volumeMounts"][-1] == WORKER["volumeMounts"][0]
    # Metadata: the user's labels beside HELIOS's, whose selector labels stay.
    labels = pod["metadata"]["labels"]
    assert labels["team"] == "ml" and labels[manifests.LABEL_DEPLOYMENT] == "demo"
    assert labels[manifests.LABEL_ROLE] == (manifests.ROLE_EVALUATE if kind == "evaluation" else manifests.ROLE_SERVE)
    assert pod["metadata"]["annotations"] == TEMPLATE["metadata"]["annotations"]


def test_serving_selector_still_matches_the_pods() -> None:
    spec = make_spec(**WORKER)
    deployment = manifests.build_deployment(OWNER, spec, spec.candidates[0], 4, "img")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_rendered_objects_pass_the_kubernetes_schemas() -> None:
    for obj in rendered(make_spec(**WORKER)) + rendered(make_spec()) + rendered(make_spec(shmSize=0)):
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}: {error.message} at {list(error.path)}")


def kept_by_server(schema: dict[str, Any], value: Any) -> Any:
    """``value`` as an API server with this structural schema stores it: unknown fields pruned."""
    if isinstance(value, list):
        return [kept_by_server(schema["items"], item) for item in value]
    if not isinstance(value, dict):
        return value
    if isinstance(schema.get("additionalProperties"), dict):
        return {key: kept_by_server(schema["additionalProperties"], item) for key, item in value.items()}
    properties = schema.get("properties", {})
    is_open = schema.get("x-kubernetes-preserve-unknown-fields", False)
    return {
        key: kept_by_server(properties[key], item) if key in properties else item
        for key, item in value.items()
        if key in properties or is_open
    }


def test_the_crd_admits_and_keeps_the_whole_template() -> None:
    spec = {"candidates": [{"name": "a", "model": "org/a"}], "worker": {**WORKER, "shmSize": "4Gi"}}
    spec_validator().validate(spec)
    root = helios_deployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert kept_by_server(root["properties"]["spec"], spec) == spec
    # The check can fail: a field the schema does not declare is pruned.
    assert kept_by_server(root["properties"]["spec"], {**spec, "nodeSelector": {}}) == spec


@pytest.mark.parametrize("kind", ["evaluation", "serving"])
def test_dev_shm_is_a_memory_emptydir_by_default(kind: str) -> None:
    pod = pods(make_spec())[kind]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in worker_container(pod)["volumeMounts"]
    sized = pods(make_spec(shmSize="8Gi"))[kind]
    assert {v["name"]: v for v in sized["spec"]["volumes"]}["dshm"]["emptyDir"]["sizeLimit"] == "8Gi"


@pytest.mark.parametrize("kind", ["evaluation", "serving"])
def test_dev_shm_can_be_turned_off(kind: str) -> None:
    pod = pods(make_spec(shmSize=0))[kind]
    assert "dshm" not in [v["name"] for v in pod["spec"]["volumes"]]
    assert "/dev/shm" not in [m["mountPath"] for m in worker_container(pod)["volumeMounts"]]


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [(0, "0"), (1536, "1536"), (2**30, "1Gi"), (8 * 2**30, "8Gi"), (2 * 10**9, "2G"), (1500 * 10**3, "1500k")],
)
def test_sizes_are_written_as_the_server_writes_them_back(num_bytes: int, text: str) -> None:
    """The API server re-serialises quantities; any other spelling would be drift on every pass."""
    assert manifests.quantity_text(num_bytes) == text and parse_quantity(text) == num_bytes


def test_an_empty_template_changes_nothing() -> None:
    metadata = {"name": "p", "labels": {"a": "b"}}
    spec = {"containers": [{"name": "worker", "image": "i"}], "securityContext": {"runAsNonRoot": True}}
    before = copy.deepcopy((metadata, spec))
    assert overlay_pod(metadata, spec, PodTemplate()) == {"metadata": metadata, "spec": spec}
    overlay_pod(metadata, spec, PodTemplate.model_validate(TEMPLATE))
    assert (metadata, spec) == before  # pure: the inputs are not modified


def template(**spec: Any) -> dict[str, Any]:
    return {"podTemplate": {"spec": spec}}


CONFLICTS = {
    "sidecar named worker": (
        template(containers=[{"name": "worker", "image": "x"}]),
        "worker.podTemplate.spec.containers[0].name: 'worker' is the name of HELIOS's worker container",
    ),
    "init container named worker": (
        template(initContainers=[{"name": "a", "image": "x"}, {"name": "worker", "image": "x"}]),
        "worker.podTemplate.spec.initContainers[1].name: 'worker' is the name",
    ),
    "container names repeated": (
        template(containers=[{"name": "a", "image": "x"}], initContainers=[{"name": "a", "image": "x"}]),
        "worker.podTemplate.spec: container name 'a' is used more than once",
    ),
    "container without image": (template(containers=[{"name": "a"}]), "worker.podTemplate.spec.containers[0].image"),
    "volume named like the shm volume": (
        template(volumes=[{"name": "dshm", "emptyDir": {}}]),
        "worker.podTemplate.spec.volumes[0].name: 'dshm' is the name of a volume HELIOS mounts",
    ),
    "volume named like the model volume": (
        template(volumes=[{"name": "models", "emptyDir": {}}]),
        "worker.podTemplate.spec.volumes[0].name: 'models'",
    ),
    "volume named like a claim volume": (
        template(volumes=[{"name": "pvc-0", "emptyDir": {}}]),
        "worker.podTemplate.spec.volumes[0].name: 'pvc-0'",
    ),
    "selector label": (
        {"podTemplate": {"metadata": {"labels": {"helios.dev/role": "serve"}}}},
        "worker.podTemplate.metadata.labels: 'helios.dev/role' is a label HELIOS sets",
    ),
    "instance label": (
        {"podTemplate": {"metadata": {"labels": {"app.kubernetes.io/instance": "other"}}}},
        "worker.podTemplate.metadata.labels: 'app.kubernetes.io/instance'",
    ),
    "helios annotation": (
        {"podTemplate": {"metadata": {"annotations": {"helios.dev/endpoint": "http://elsewhere"}}}},
        "worker.podTemplate.metadata.annotations: 'helios.dev/endpoint'",
    ),
    "mount over /dev/shm": (
        {"volumeMounts": [{"name": "v", "mountPath": "/dev/shm"}], **template(volumes=[{"name": "v"}])},
        "worker.volumeMounts[0].mountPath: '/dev/shm' overlaps /dev/shm",
    ),
    "mount above /dev/shm": (
        {"volumeMounts": [{"name": "v", "mountPath": "/dev"}], **template(volumes=[{"name": "v"}])},
        "worker.volumeMounts[0].mountPath: '/dev' overlaps /dev/shm",
    ),
    "mount of an unknown volume": (
        {"volumeMounts": [{"name": "v", "mountPath": "/data"}]},
        "worker: volumeMounts[0].name: 'v' is not a volume of podTemplate.spec.volumes",
    ),
    "negative shm size": ({"shmSize": -1}, "worker.shmSize: invalid quantity -1"),
    "unknown pod field": (template(hostNetwork=True), "worker.podTemplate.spec.hostNetwork"),
}


@pytest.mark.parametrize("name", sorted(CONFLICTS))
def test_overlays_that_fight_helios_are_rejected_with_their_path(name: str) -> None:
    worker, message = CONFLICTS[name]
    with pytest.raises(ValidationError) as error:
        make_spec(**worker)
    assert message in describe_validation_error(error.value)


@pytest.mark.parametrize("kind", ["evaluation", "serving"])
def test_every_label_helios_sets_is_refused_in_the_template(kind: str) -> None:
    """The reserved keys stay in step with the labels the builders set."""
    for key, value in pods(make_spec())[kind]["metadata"]["labels"].items():
        with pytest.raises(ValidationError):
            make_spec(podTemplate={"metadata": {"labels": {key: value}}})
