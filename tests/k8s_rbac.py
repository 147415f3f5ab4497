"""RBAC as the API server authorizes a request: Roles, ClusterRoles and their bindings (pure).

The emulator learns who sent a request from its bearer token (``KubeApiEmulator.tokens``). An
admin (group ``system:masters``: the test's kubectl) may do anything; any other user, such as the
operator's ServiceAccount, only what the Roles and ClusterRoles bound to it grant, read from the
RBAC objects the emulator stores (the chart's rendered ones, applied with kubectl). What is not
granted is a 403 ``Forbidden`` worded as the server words it. As on a cluster, every authenticated
user may read discovery, OpenAPI and the version (``system:discovery``, ``system:public-info-viewer``).

Also emulated: the ``OwnerReferencesPermissionEnforcement`` admission plugin, which needs ``update``
on the owner's ``finalizers`` subresource to set ``blockOwnerDeletion`` on an owner reference.
Not emulated: aggregated ClusterRoles, ``nonResourceURLs`` rules, escalation checks, and impersonation
by anyone but an admin (whose ``--as`` is honoured without an ``impersonate`` permission check).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Body = dict[str, Any]
ADMIN_GROUP = "system:masters"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        return ADMIN_GROUP in self.groups

    @classmethod
    def service_account(cls, namespace: str, name: str) -> User:
        groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated")
        return cls(f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}", groups)

    @classmethod
    def named(cls, name: str) -> User:
        """A user by name, with the groups the server gives it (a ServiceAccount's included)."""
        namespace, _, account = name.removeprefix(SERVICE_ACCOUNT_PREFIX).rpartition(":")
        if name.startswith(SERVICE_ACCOUNT_PREFIX) and namespace:
            return cls.service_account(namespace, account)
        return cls(name, ("system:authenticated",))


ADMIN = User("admin", (ADMIN_GROUP, "system:authenticated"))


@dataclass(frozen=True)
class Attributes:
    """What a resource request asks, as RBAC sees it."""

    verb: str
    group: str
    resource: str
    subresource: str | None = None
    namespace: str | None = None  # None: cluster scope
    name: str | None = None

    @property
    def resource_path(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def request_verb(method: str, has_name: bool, is_watch: bool) -> str:
    """The RBAC verb of an HTTP request, as the server's RequestInfoFactory derives it."""
    method = method.upper()
    if method == "GET":
        return "watch" if is_watch else ("get" if has_name else "list")
    if method == "DELETE":
        return "delete" if has_name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def rule_allows(rule: Mapping[str, Any], attributes: Attributes) -> bool:
    verbs, groups = rule.get("verbs") or [], rule.get("apiGroups") or []
    resources, names = rule.get("resources") or [], rule.get("resourceNames") or []
    wanted = attributes.resource_path
    resource_matches = any(
        item in ("*", wanted) or (attributes.subresource and item == f"*/{attributes.subresource}")
        for item in resources
    )
    return (
        any(verb in ("*", attributes.verb) for verb in verbs)
        and any(group in ("*", attributes.group) for group in groups)
        and resource_matches
        and (not names or attributes.name in names)
    )


def subject_matches(subject: Mapping[str, Any], user: User, binding_namespace: str | None) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return name == user.name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        return user.name == f"system:serviceaccount:{subject.get('namespace') or binding_namespace}:{name}"
    return False


def authorize(user: User, attributes: Attributes, rbac_objects: Iterable[Body]) -> bool:
    """Whether any binding of ``user`` grants ``attributes`` (ClusterRoleBindings everywhere,
    RoleBindings only in their own namespace, to a Role there or to a ClusterRole)."""
    objects = list(rbac_objects)
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}
    for binding in objects:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        namespace = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        if namespace is not None and namespace != attributes.namespace:
            continue
        if not any(subject_matches(subject, user, namespace) for subject in binding.get("subjects") or []):
            continue
        ref = binding.get("roleRef") or {}
        role_namespace = namespace if ref.get("kind") == "Role" else None
        role = roles.get((ref.get("kind"), role_namespace, ref.get("name")))
        if role is not None and any(rule_allows(rule, attributes) for rule in role.get("rules") or []):
            return True
    return False


def forbidden_reason(user: User, attributes: Attributes) -> str:
    """``User "u" cannot list resource "pods" in API group "" in the namespace "default"``."""
    where = f'in the namespace "{attributes.namespace}"' if attributes.namespace else "at the cluster scope"
    return (
        f'User "{user.name}" cannot {attributes.verb} resource "{attributes.resource_path}" '
        f'in API group "{attributes.group}" {where}'
    )


def forbidden_message(attributes: Attributes, reason: str) -> str:
    """The Status message: ``<resource>[.group] ["name"] is forbidden: <reason>``."""
    qualified = f"{attributes.resource}.{attributes.group}" if attributes.group else attributes.resource
    named = f'{qualified} "{attributes.name}"' if attributes.name else qualified
    return f"{named} is forbidden: {reason}"


def owner_references_to_check(new: Body, old: Body | None) -> list[Body]:
    """Owner references that set ``blockOwnerDeletion`` anew (unchanged ones are not checked again)."""
    before = [] if old is None else (old.get("metadata") or {}).get("ownerReferences") or []
    return [
        ref
        for ref in (new.get("metadata") or {}).get("ownerReferences") or []
        if ref.get("blockOwnerDeletion") and ref not in before
    ]
