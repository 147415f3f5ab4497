"""The autoscaling examples target a HeliosDeployment through its scale subresource and read
metric names HELIOS workers really export."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from helios_operator.crds import VERSION, crd_files
from helios_operator.spec import API_GROUP as GROUP
from helios_worker.vllm_metrics import VllmMetrics

if TYPE_CHECKING:
    from tests.k8s_fixtures import K8sApi

pytest_plugins = ["tests.k8s_fixtures"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "autoscaling"


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    VllmMetrics(registry, "m")
    return {family.name for family in registry.collect()}


def load(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def target_is_our_heliosdeployment(manifest: dict) -> None:
    target = manifest["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HeliosDeployment", "name": "llama-ee"}
    examples = Path(__file__).resolve().parent.parent / "examples"
    assert yaml.safe_load((examples / "llama-early-exit.yaml").read_text())["metadata"]["name"] == target["name"]


def test_keda_scales_on_a_metric_the_workers_export():
    scaled = load("keda-scaledobject.yaml")
    assert scaled["kind"] == "ScaledObject" and scaled["apiVersion"] == "keda.sh/v1alpha1"
    target_is_our_heliosdeployment(scaled)
    [trigger] = scaled["spec"]["triggers"]
    metric = trigger["metadata"]["query"].split("(", 1)[1].split("{", 1)[0]
    assert metric == "vllm:num_requests_waiting" and metric in exported_names()


def test_hpa_is_a_valid_kubernetes_object_on_the_adapter_name_of_an_exported_metric():
    hpa = load("hpa-prometheus-adapter.yaml")
    kubernetes_validate.validate(hpa, "1.33", strict=True)
    target_is_our_heliosdeployment(hpa)
    adapter_name = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert adapter_name.replace("vllm_", "vllm:", 1) in exported_names()


@pytest.mark.timeout(60)
def test_the_scale_subresource_they_drive_is_admitted_like_any_write(k8s_api: K8sApi) -> None:
    """HPA and KEDA write /scale; the server admits the result against the CRD like any other write."""
    for text in crd_files().values():
        k8s_api.apply(text)
    k8s_api.apply((EXAMPLES.parent / "llama-early-exit.yaml").read_text())
    k8s_api.kubectl("scale", "hd", "llama-ee", "--replicas=3")
    assert k8s_api.kubectl_json("get", "hd", "llama-ee")["spec"]["replicas"] == 3
    refused = k8s_api.kubectl(
        "patch", "hd", "llama-ee", "--subresource=scale", "--type=merge", "-p", '{"spec":{"replicas":-1}}', check=False
    )
    assert refused.returncode != 0 and "spec.replicas: Invalid value: -1" in refused.stderr
