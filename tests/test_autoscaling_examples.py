"""The autoscaling examples target a HeliosDeployment through its scale subresource and read
metric names HELIOS workers really export."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import yaml
from prometheus_client import CollectorRegistry

from helios_operator.crds import VERSION
from helios_operator.spec import API_GROUP as GROUP
from helios_worker.vllm_metrics import VllmMetrics

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
