"""What the operator may do, listed once; ClusterRole/Role rules are rendered from it.

The Helm chart renders its RBAC from ``PERMISSIONS`` (via ``rules``), so adding an API call
means adding its verb here. Everything is namespaced: bind the rules with a Role per watched
namespace, or a ClusterRole for a cluster-wide operator. kopf's CRD and Namespace scanning is
off (``settings.scanning.disabled``), so no cluster-scoped access is needed.
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
    Permission(API_GROUP, "heliosdeployments", ("get", "list", "watch", "patch"), "watch specs; kopf annotations"),
    Permission(API_GROUP, "heliosdeployments/status", ("get", "patch"), "phase, conditions, decisions"),
    Permission(API_GROUP, "heliosstatuses", ("get", "create", "patch"), "the HeliosStatus report"),
    Permission("", "pods", ("get", "list", "create", "delete"), "evaluation pods; find and scrape workers"),
    Permission("", "services", ("get", "list", "watch", "create", "patch"), "the serving Service; repaired on change"),
    Permission("", "configmaps", ("get", "create", "patch"), "evaluation reports; prompts from a ConfigMap"),
    Permission("apps", "deployments", ("get", "list", "watch", "create", "patch"), "the serving Deployment; repaired"),
    Permission("", "events", ("create",), "a Kubernetes Event per decision (kopf.info/warn)"),
    Permission("kopf.dev", "kopfpeerings", ("get", "list", "watch", "patch"), "kopf peering (not with --standalone)"),
)


def rules() -> list[dict[str, Any]]:
    """Role (or ClusterRole) rules, one per resource, in the order above."""
    return [{"apiGroups": [p.group], "resources": [p.resource], "verbs": list(p.verbs)} for p in PERMISSIONS]
