"""The serving children HELIOS last applied, so that a watch can repair them at once.

Every reconcile pass applies the desired Deployment and Service (``Context.apply``); this
registry keeps the last desired manifest of each. The watch handlers on those kinds
(``handlers.child_changed``) look an event's object up here: a deleted child is recreated and
a drifted one patched back within seconds, without waiting for the next pass. After an
operator restart the registry is empty until the first pass, which repairs on its own.
Evaluation pods are not here: a round decides whether a missing one is recreated.
"""

from __future__ import annotations

import copy
from typing import Any

REPAIRED_KINDS = frozenset({"Deployment", "Service"})


class DesiredChildren:
    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str, str], dict[str, Any]] = {}

    def remember(self, namespace: str, manifest: dict[str, Any]) -> None:
        if manifest["kind"] in REPAIRED_KINDS:
            self._by_key[(namespace, manifest["kind"], manifest["metadata"]["name"])] = copy.deepcopy(manifest)

    def get(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        return self._by_key.get((namespace, kind, name))

    def forget(self, namespace: str, kind: str, name: str) -> None:
        """A child HELIOS deleted on purpose."""
        self._by_key.pop((namespace, kind, name), None)

    def forget_owner(self, namespace: str, owner_uid: str) -> None:
        for key, manifest in list(self._by_key.items()):
            owners = manifest["metadata"].get("ownerReferences") or []
            if key[0] == namespace and any(ref.get("uid") == owner_uid for ref in owners):
                del self._by_key[key]


_DESIRED = DesiredChildren()


def desired_children() -> DesiredChildren:
    """The operator process's registry (one per process, like kopf's own registry)."""
    return _DESIRED


def owner_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The HeliosDeployment owner reference of a child, if it has one."""
    for ref in body["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "HeliosDeployment":
            return ref
    return None
