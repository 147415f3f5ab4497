"""The few Kubernetes API calls the operator makes, as plain JSON over the official client.

The kubernetes client supplies login (in-cluster service account, else kubeconfig), TLS and
the connection pool; requests and answers stay plain dicts, as kopf hands them to handlers.
Calls block, so async handlers run them with ``asyncio.to_thread``. Every verb used here is
listed in ``rbac.PERMISSIONS``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import kubernetes

from helios_operator.spec import API_GROUP

Body = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT_S = 15.0

# kind -> (API prefix, plural)
PATHS: dict[str, tuple[str, str]] = {
    "Pod": ("/api/v1", "pods"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "Job": ("/apis/batch/v1", "jobs"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "HeliosStatus": (f"/apis/{API_GROUP}/v1alpha1", "heliosstatuses"),
    "HeliosDeployment": (f"/apis/{API_GROUP}/v1alpha1", "heliosdeployments"),
}
# Pods, a Job's pod template and a claim's spec are immutable once created: an existing one is kept, never patched.
IMMUTABLE = frozenset({"Pod", "Job", "PersistentVolumeClaim"})


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Kube:
    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = api

    @classmethod
    def from_environment(cls) -> Kube:
        """Log in as a pod's service account, else through the kubeconfig."""
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=configuration)
        return cls(kubernetes.client.ApiClient(configuration))

    def request(
        self, method: str, path: str, body: Any = None, query: Mapping[str, str] | None = None, content_type: str = ""
    ) -> Body:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        serialized = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        method_, url, header_params, payload = serialized[:4]
        response = self.api.call_api(
            method_, url, header_params=header_params, body=payload, _request_timeout=REQUEST_TIMEOUT_S
        )
        data = response.read()
        document = json.loads(data) if data else {}
        if response.status >= 400:
            raise KubeError(response.status, document.get("message", str(document)))
        return document

    def _path(self, kind: str, namespace: str, name: str | None = None) -> str:
        prefix, plural = PATHS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        return f"{path}/{name}" if name else path

    def get(self, kind: str, namespace: str, name: str) -> Body | None:
        try:
            return self.request("GET", self._path(kind, namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str, labels: Mapping[str, str]) -> list[Body]:
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        return self.request("GET", self._path(kind, namespace), query={"labelSelector": selector}).get("items", [])

    def apply(self, manifest: Body) -> Body:
        """Create, or merge-patch the existing object to match (idempotent: safe to repeat)."""
        kind, meta = manifest["kind"], manifest["metadata"]
        try:
            return self.request("POST", self._path(kind, meta["namespace"]), body=manifest)
        except KubeError as error:
            if error.status != 409:
                raise
        if kind in IMMUTABLE:
            return self.get(kind, meta["namespace"], meta["name"]) or manifest
        path = self._path(kind, meta["namespace"], meta["name"])
        return self.request("PATCH", path, body=manifest, content_type=MERGE_PATCH)

    def delete(self, kind: str, namespace: str, name: str, propagation: str | None = None) -> None:
        """Delete; ``propagation`` "Background" also deletes dependents (a Job's pods: batch/v1 orphans them
        by default)."""
        query = {"propagationPolicy": propagation} if propagation else None
        try:
            self.request("DELETE", self._path(kind, namespace, name), query=query)
        except KubeError as error:
            if error.status != 404:
                raise
