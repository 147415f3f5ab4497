"""Drift between a child HELIOS wants and the live object (pure).

HELIOS owns the fields it writes: a live object *covers* the desired one when every field of
the desired manifest has the same value in the live object. Fields HELIOS does not write
(server defaults, other controllers' annotations, status) are ignored, so a pass never fights
the API server's defaulting; a field HELIOS writes that someone changed or removed is drift
and is reverted.

Lists are compared element by element in order (HELIOS writes containers, env and ports in
a fixed order), each element by the same rule. Kubernetes normalises some values (``"1"`` and
``1`` for a quantity, an int-or-string port): those compare by their text.
"""

from __future__ import annotations

from typing import Any


def drifted_paths(desired: Any, live: Any, path: str = "") -> list[str]:
    """The paths of ``desired`` whose value ``live`` does not have; empty when ``live`` covers it."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return [path or "."]
        found: list[str] = []
        for key, value in desired.items():
            found += drifted_paths(value, live.get(key), f"{path}.{key}" if path else key)
        return found
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return [path]
        found = []
        for index, (want, have) in enumerate(zip(desired, live, strict=True)):
            found += drifted_paths(want, have, f"{path}[{index}]")
        return found
    if desired == live or (live is not None and str(desired) == str(live)):
        return []
    return [path]


# Kinds whose ``status`` another controller writes; HeliosStatus is HELIOS's report, status included.
_STATUS_OWNED_ELSEWHERE = frozenset({"Deployment", "Service", "Pod"})


def owned_content(manifest: dict[str, Any]) -> dict[str, Any]:
    """What of a manifest HELIOS owns: labels, annotations and the content (status where it is HELIOS's)."""
    metadata = {key: manifest["metadata"][key] for key in ("labels", "annotations") if key in manifest["metadata"]}
    skipped = {"metadata", "status"} if manifest.get("kind") in _STATUS_OWNED_ELSEWHERE else {"metadata"}
    return {**{k: v for k, v in manifest.items() if k not in skipped}, "metadata": metadata}
