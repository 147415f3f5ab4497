"""What the operator may do, listed once; ClusterRole/Role rules are rendered from it.

The Helm chart renders its RBAC from ``PERMISSIONS`` (via ``rules``), so adding an API call
means adding its verb here. Least privilege: only the verbs ``kube.py`` and kopf really call, each
with who calls it; the contract tests run the operator as the chart's ServiceAccount against an
emulator that enforces these rules (tests/k8s_rbac.py), so a missing verb fails them with a 403.
Everything is namespaced: bind the rules with a Role per watched namespace (the chart's default),
or a ClusterRole for a cluster-wide operator. kopf's CRD and Namespace scanning is off
(``settings.scanning.disabled``) and the chart runs it ``--standalone`` (no KopfPeering objects),
so no cluster-scoped access is needed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from helios_operator.spec import API_GROUP


class Permission(NamedTuple):
    group: str
    resource: str
    verbs: tuple[str, ...]
    why: str


PERMISSIONS: tuple[Permission, ...] = (
    Permission(
        API_GROUP, "heliosdeployments", ("get", "list", "watch", "patch"), "kopf watches and annotates; repairs read"
    ),
    Permission(API_GROUP, "heliosdeployments/status", ("patch",), "phase, conditions, decisions (kopf patches)"),
    # Children's owner references set blockOwnerDeletion, which clusters enforcing owner references
    # (the OwnerReferencesPermissionEnforcement admission plugin) only allow with this.
    Permission(API_GROUP, "heliosdeployments/finalizers", ("update",), "blockOwnerDeletion on children"),
    Permission(API_GROUP, "heliosstatuses", ("get", "create", "patch"), "the HeliosStatus report"),
    Permission(
        "", "pods", ("get", "list", "watch", "create", "delete"), "evaluation pods; find, scrape and watch workers"
    ),
    Permission("", "services", ("get", "list", "watch", "create", "patch"), "the serving Service; repaired on change"),
    Permission("", "secrets", ("get", "create"), "the control token of each HeliosDeployment's workers"),
    Permission("", "configmaps", ("get", "create", "patch"), "evaluation reports; prompts from a ConfigMap"),
    Permission(
        "apps", "deployments", ("get", "list", "watch", "create", "patch", "delete"), "serving and shadow; repaired"
    ),
    Permission("policy", "poddisruptionbudgets", ("get", "create", "patch", "delete"), "serving PDB (replicas > 1)"),
    Permission(
        "networking.k8s.io",
        "networkpolicies",
        ("get", "create", "patch", "delete"),
        "workers' control port: operator only",
    ),
    Permission("batch", "jobs", ("get", "create", "delete"), "calibration Jobs; rerun when their inputs change"),
    Permission("", "persistentvolumeclaims", ("get", "create"), "the claim calibration Jobs write exits to"),
    Permission("", "events", ("create",), "a Kubernetes Event per decision (kopf.info/warn)"),
)


def rules() -> list[dict[str, Any]]:
    """Role (or ClusterRole) rules, one per resource, in the order above."""
    return [{"apiGroups": [p.group], "resources": [p.resource], "verbs": list(p.verbs)} for p in PERMISSIONS]
