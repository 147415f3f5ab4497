"""RBAC in the Kubernetes API emulator, and the operator's RBAC as the Helm chart renders it.

Driven by the real kubectl: ``--as`` impersonates a ServiceAccount (kubectl sends no token over
the emulator's plain HTTP), so each refusal is checked as kubectl prints it. The operator itself
runs under these rules in the lifecycle and e2e tests (the ``helios_operator`` fixture).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from helios_operator.crds import crd_files
from helios_operator.k8s.rbac import PERMISSIONS
from tests.k8s_rbac import Attributes, request_verb, rule_allows

if TYPE_CHECKING:
    from tests.k8s_fixtures import K8sApi

pytest_plugins = ["tests.k8s_fixtures"]

ROBOT = "system:serviceaccount:default:robot"
OPERATOR = "system:serviceaccount:default:helios-operator"


def as_user(k8s_api: K8sApi, user: str, *args: str, input: str | None = None) -> tuple[bool, str]:
    """kubectl as ``user``: whether it succeeded, and what it printed."""
    result = k8s_api.kubectl(f"--as={user}", *args, input=input, check=False)
    return result.returncode == 0, result.stdout + result.stderr


def can(k8s_api: K8sApi, user: str, *args: str, input: str | None = None) -> bool:
    ok, printed = as_user(k8s_api, user, *args, input=input)
    assert ok or "Error from server (Forbidden)" in printed, printed
    return ok


def role(kind: str, name: str, rules: list[dict[str, Any]], namespace: str | None = None) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, "rules": rules}


def binding(kind: str, name: str, role_kind: str, namespace: str | None = None) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "default"}],
    }


def configmap(name: str, namespace: str = "default", **meta: Any) -> str:
    return json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace, **meta}}
    )


# --- pure -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "has_name", "is_watch", "verb"),
    [
        ("GET", True, False, "get"),
        ("GET", False, False, "list"),
        ("GET", False, True, "watch"),
        ("POST", False, False, "create"),
        ("PUT", True, False, "update"),
        ("PATCH", True, False, "patch"),
        ("DELETE", True, False, "delete"),
        ("DELETE", False, False, "deletecollection"),
    ],
)
def test_request_verbs(method: str, has_name: bool, is_watch: bool, verb: str) -> None:
    assert request_verb(method, has_name, is_watch) == verb


def test_rules_match_groups_resources_subresources_and_names() -> None:
    status = Attributes("patch", "helios.dev", "heliosdeployments", "status", "default", "demo")
    assert rule_allows(
        {"apiGroups": ["helios.dev"], "resources": ["heliosdeployments/status"], "verbs": ["patch"]}, status
    )
    assert not rule_allows({"apiGroups": ["helios.dev"], "resources": ["heliosdeployments"], "verbs": ["*"]}, status)
    assert rule_allows({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]}, status)
    assert not rule_allows({"apiGroups": [""], "resources": ["heliosdeployments/status"], "verbs": ["patch"]}, status)
    named = {"apiGroups": ["helios.dev"], "resources": ["heliosdeployments/status"], "verbs": ["patch"]}
    assert not rule_allows({**named, "resourceNames": ["other"]}, status)


# --- the emulator -------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_nothing_is_granted_without_a_binding_and_refusals_read_as_a_servers(k8s_api: K8sApi) -> None:
    ok, printed = as_user(k8s_api, ROBOT, "get", "configmaps")
    assert not ok
    assert (
        'Error from server (Forbidden): configmaps is forbidden: User "system:serviceaccount:default:robot" '
        'cannot list resource "configmaps" in API group "" in the namespace "default"'
    ) in printed
    ok, printed = as_user(k8s_api, ROBOT, "get", "deployments", "web", "-n", "team-a")
    assert (
        'deployments.apps "web" is forbidden' in printed and 'in API group "apps" in the namespace "team-a"' in printed
    )
    ok, printed = as_user(k8s_api, ROBOT, "get", "pods", "-A")
    assert not ok and 'cannot list resource "pods" in API group "" at the cluster scope' in printed
    assert can(k8s_api, ROBOT, "api-resources")  # discovery is open to every authenticated user


@pytest.mark.timeout(60)
def test_roles_grant_per_verb_and_namespace_cluster_roles_everywhere(k8s_api: K8sApi) -> None:
    k8s_api.apply(configmap("settings"))
    k8s_api.apply(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}))
    k8s_api.apply(configmap("settings", namespace="team-a"))
    read_one = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
    k8s_api.apply(
        yaml.safe_dump_all(
            [role("Role", "reader", read_one, "default"), binding("RoleBinding", "reader", "Role", "default")]
        )
    )
    assert can(k8s_api, ROBOT, "get", "configmap", "settings")
    assert not can(k8s_api, ROBOT, "get", "configmaps")  # list is another verb
    assert not can(k8s_api, ROBOT, "get", "configmap", "settings", "-n", "team-a")  # a Role is one namespace
    assert not can(k8s_api, ROBOT, "delete", "configmap", "settings")

    # A ClusterRole bound by a RoleBinding grants in that namespace only; by a ClusterRoleBinding, everywhere.
    list_all = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]
    k8s_api.apply(
        yaml.safe_dump_all(
            [role("ClusterRole", "lister", list_all), binding("RoleBinding", "lister", "ClusterRole", "team-a")]
        )
    )
    assert can(k8s_api, ROBOT, "get", "configmaps", "-n", "team-a")
    assert not can(k8s_api, ROBOT, "get", "configmaps", "-A")
    k8s_api.apply(yaml.safe_dump(binding("ClusterRoleBinding", "lister", "ClusterRole")))
    assert can(k8s_api, ROBOT, "get", "configmaps", "-A")


@pytest.mark.timeout(60)
def test_tokens_authenticate_and_unknown_ones_are_401(k8s_api: K8sApi) -> None:
    def get(path: str, token: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(k8s_api.url + path, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    code, status = get("/api/v1/namespaces/default/pods", "not-a-token")
    assert (code, status["reason"]) == (401, "Unauthorized")
    kubeconfig = k8s_api.login_as_operator()
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    assert get("/api/v1/namespaces/default/pods", token)[0] == 200
    code, status = get("/api/v1/nodes/node-1", token)
    assert (code, status["kind"], status["reason"]) == (403, "Status", "Forbidden")
    reason = f'User "{OPERATOR}" cannot get resource "nodes" in API group "" at the cluster scope'
    assert status["message"] == f'nodes "node-1" is forbidden: {reason}'
    assert status["details"] == {"name": "node-1", "group": "", "kind": "nodes"}


# --- the chart's rules for the operator -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_chart_grants_the_operator_its_permissions_and_nothing_else(k8s_api: K8sApi) -> None:
    for text in crd_files().values():
        k8s_api.apply(text)
    k8s_api.login_as_operator()  # namespaced: the chart's default
    granted = {(p.group, p.resource): p.verbs for p in PERMISSIONS}
    # Each (kind, verb) kubectl can ask: allowed exactly when rbac.PERMISSIONS lists it.
    kinds = {
        "pods": "",
        "services": "",
        "configmaps": "",
        "secrets": "",
        "deployments.apps": "apps",
        "hd": "helios.dev",
    }
    plural = {"deployments.apps": "deployments", "hd": "heliosdeployments"}
    for kind, group in kinds.items():
        verbs = granted.get((group, plural.get(kind, kind)), ())
        assert can(k8s_api, OPERATOR, "get", kind) == ("list" in verbs), (kind, "list")
        assert can(k8s_api, OPERATOR, "delete", kind, "absent", "--ignore-not-found") == ("delete" in verbs), kind
    assert not can(k8s_api, OPERATOR, "get", "pods", "-A")  # namespaced by default: not every namespace
    assert not can(k8s_api, OPERATOR, "get", "nodes")
    assert ("helios.dev", "heliosdeployments/finalizers") in granted and granted[
        ("helios.dev", "heliosdeployments/status")
    ] == ("patch",)
    assert not any(group == "kopf.dev" for group, _ in granted)  # run --standalone: no peering objects
    assert not any("*" in verbs for verbs in granted.values())

    k8s_api.login_as_operator({"rbac": {"clusterWide": True}})
    assert can(k8s_api, OPERATOR, "get", "pods", "-A")


@pytest.mark.timeout(60)
def test_block_owner_deletion_needs_update_on_the_owners_finalizers(k8s_api: K8sApi) -> None:
    for text in crd_files().values():
        k8s_api.apply(text)
    k8s_api.login_as_operator()
    k8s_api.apply(
        yaml.safe_dump(
            {
                "apiVersion": "helios.dev/v1alpha1",
                "kind": "HeliosDeployment",
                "metadata": {"name": "demo"},
                "spec": {"candidates": [{"name": "a", "model": "org/a"}]},
            }
        )
    )
    k8s_api.apply(
        json.dumps(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}
        )
    )

    def owned_by(kind: str, api_version: str, name: str) -> str:
        uid = k8s_api.kubectl_json("get", kind, name)["metadata"]["uid"]
        ref = {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "blockOwnerDeletion": True}
        return configmap(f"child-of-{name}", ownerReferences=[ref])

    assert can(
        k8s_api, OPERATOR, "create", "-f", "-", input=owned_by("HeliosDeployment", "helios.dev/v1alpha1", "demo")
    )
    ok, printed = as_user(k8s_api, OPERATOR, "create", "-f", "-", input=owned_by("Service", "v1", "web"))
    assert (
        not ok
        and "cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on"
        in printed
    )
    assert 'cannot update resource "services/finalizers"' in printed
