"""Why an evaluation pod will never produce a report, read from its status (pure).

The kubelet reports the cases a round must not wait on: a pod that ended (``Failed``, which is
also how an eviction ends), an image that cannot be pulled, a container that cannot be created,
and a container that keeps crashing. A pod the scheduler cannot place is only reported at the
round's deadline (a node may yet come up), with the scheduler's message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CRASH_LOOP_RESTARTS = 3  # restarts of a crash-looping container before its candidate is dropped
_NEVER_STARTS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
)


def _container_statuses(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def failure(pod: Mapping[str, Any]) -> str | None:
    """The reason ``pod`` will never produce a report, or None while it still may."""
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        reason = status.get("reason") or "Failed"
        return f"pod {reason}" + (f": {status['message']}" if status.get("message") else "")
    for container in _container_statuses(status):
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in _NEVER_STARTS:
            return f"container {container.get('name')}: {reason}" + (
                f": {waiting['message']}" if waiting.get("message") else ""
            )
        restarts = int(container.get("restartCount") or 0)
        if reason == "CrashLoopBackOff" and restarts >= CRASH_LOOP_RESTARTS:
            terminated = (container.get("lastState") or {}).get("terminated") or {}
            last = terminated.get("reason") or "crashed"
            return f"container {container.get('name')}: CrashLoopBackOff after {restarts} restarts (last: {last})"
    return None


def pending_reason(pod: Mapping[str, Any] | None) -> str:
    """What a pod without a report is waiting on, for the deadline's message."""
    if pod is None:
        return "no pod"
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"unschedulable: {condition.get('message') or condition.get('reason') or 'no node fits'}"
    for container in _container_statuses(status):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return f"container {container.get('name')}: {waiting['reason']}"
    return f"pod {status.get('phase') or 'Pending'}, no report"
