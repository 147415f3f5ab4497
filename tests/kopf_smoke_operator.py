"""A minimal kopf operator for the emulator's contract test: a Widget gets a child ConfigMap.

Run by ``tests/test_k8s_emulator.py`` through ``kopf.testing.KopfRunner``; not a HELIOS part.
"""

from typing import Any

import kopf
import kubernetes

GROUP, VERSION, PLURAL = "test.helios.dev", "v1", "widgets"


def build_child_configmap(name: str, size: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-config", "labels": {"widget": name}},
        "data": {"size": str(size)},
    }


@kopf.on.create(GROUP, VERSION, PLURAL)
def create_child(name: str, namespace: str, spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
    child = build_child_configmap(name, spec.get("size", 1))
    kopf.adopt(child)  # ownerReferences: deleting the Widget deletes the ConfigMap
    kubernetes.config.load_kube_config()
    api = kubernetes.client.CoreV1Api()
    try:
        api.create_namespaced_config_map(namespace, child)
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:  # already created by an earlier attempt: fine
            raise
    patch.status["phase"] = "Ready"
    patch.status["child"] = child["metadata"]["name"]


@kopf.on.delete(GROUP, VERSION, PLURAL)
def release_widget(name: str, logger: kopf.Logger, **_: Any) -> None:
    # Having a deletion handler makes kopf put its finalizer on every Widget.
    logger.info(f"Widget {name} released; its ConfigMap goes with it.")
