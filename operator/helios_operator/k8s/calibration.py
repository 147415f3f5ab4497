"""Calibration Jobs (issue 11): a candidate with ``calibrate`` gets calibrated exits before its evaluation.

An evaluation round asks ``ensure`` for each such candidate on every poll. The first time, the
operator creates the claim ``<name>-exits`` (once: a claim's spec is immutable) and a Job of the
worker image that runs ``helios-worker calibrate`` and writes the sidecar to
``/mnt/exits/<candidate>`` on it (``manifests.build_calibration_job``). The candidate's evaluation
pod is created only once the Job has succeeded; a Job that failed (its condition, or a pod that
can never start) fails the candidate for the round with the Job's and the container's reason, as
a failed evaluation pod does, and selection goes on among the others.

The Job carries the hash of its inputs (model, revision, the texts' source and content, tokens,
exit layers); a succeeded one is kept in ``status.calibrations``, so it is not run again, even if
the Job object is gone, until an input changes. A Job whose inputs changed is deleted and
replaced; a failed one is retried in the next round, not within the round it failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from helios_operator.k8s import manifests, pod_health
from helios_operator.k8s.context import Context
from helios_operator.spec import Candidate

HASH_ANNOTATION = "helios.dev/calibration-hash"
ROUND_ANNOTATION = "helios.dev/round"
TERMINATION_MESSAGE_CHARS = 600


@dataclass(frozen=True)
class Outcome:
    """Where a candidate's calibration stands: done, failed (with why), or neither yet (running)."""

    is_done: bool = False
    failure: str | None = None


async def inputs_hash(ctx: Context, candidate: Candidate) -> str:
    """The hash of what the calibration's result depends on; the texts ConfigMap's content included."""
    settings = candidate.calibrate
    if settings is None:
        raise ValueError(f"candidate {candidate.name} has no calibrate settings")
    content = None
    if (ref := settings.texts.config_map_ref) is not None:
        configmap = await asyncio.to_thread(ctx.kube.get, "ConfigMap", ctx.namespace, ref.name)
        data = (configmap or {}).get("data") or {}
        content = hashlib.sha256(data[ref.key].encode()).hexdigest() if ref.key in data else None
    inputs = [candidate.model, candidate.revision, settings.model_dump(mode="json"), content]
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return condition
    return None


def has_succeeded(job: Mapping[str, Any]) -> bool:
    return _condition(job, "Complete") is not None


def has_failed(job: Mapping[str, Any]) -> bool:
    return _condition(job, "Failed") is not None


def failure_reason(job: Mapping[str, Any], pods: list[Mapping[str, Any]]) -> str:
    """The Job controller's reason, and what the container said (its termination message, the log tail)."""
    condition = _condition(job, "Failed") or {}
    reason = f"calibration Job {job['metadata']['name']} failed ({condition.get('reason') or 'Failed'}"
    reason += f": {condition['message']})" if condition.get("message") else ")"
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if terminated:
                message = (terminated.get("message") or "").strip()[-TERMINATION_MESSAGE_CHARS:]
                reason += f"; exit status {terminated.get('exitCode')}" + (f": {message}" if message else "")
    return reason


def _record(ctx: Context, candidate: Candidate, wanted: str) -> None:
    records = {r["name"]: r for r in ctx.status.get("calibrations") or []}
    records[candidate.name] = {"name": candidate.name, "specHash": wanted, "exits": manifests.exits_path(candidate)}
    ctx.status["calibrations"] = [records[c.name] for c in ctx.spec.candidates if c.name in records]


async def _ensure_claim(ctx: Context) -> None:
    name = manifests.exits_claim_name(ctx.name)
    if await asyncio.to_thread(ctx.kube.get, "PersistentVolumeClaim", ctx.namespace, name) is None:
        await asyncio.to_thread(ctx.kube.apply, manifests.build_exits_claim(ctx.body, ctx.spec))
        ctx.event("Normal", "ExitsClaimCreated", f"PersistentVolumeClaim {name} for calibrated exits")


async def ensure(ctx: Context, candidate: Candidate, wanted: str, round_: int) -> Outcome:
    """One step of ``candidate``'s calibration for inputs ``wanted`` (see the module docstring)."""
    recorded = {r["name"]: r.get("specHash") for r in ctx.status.get("calibrations") or []}
    if recorded.get(candidate.name) == wanted:
        return Outcome(is_done=True)
    await _ensure_claim(ctx)
    name = manifests.calibration_job_name(ctx.name, candidate.name)
    job = await asyncio.to_thread(ctx.kube.get, "Job", ctx.namespace, name)
    annotations = ((job or {}).get("metadata") or {}).get("annotations") or {}
    is_stale = annotations.get(HASH_ANNOTATION) != wanted
    if job is not None and (is_stale or (has_failed(job) and annotations.get(ROUND_ANNOTATION) != str(round_))):
        await asyncio.to_thread(ctx.kube.delete, "Job", ctx.namespace, name, "Background")
        why = "its inputs changed" if is_stale else "it failed in an earlier round"
        ctx.event("Normal", "CalibrationReplaced", f"{candidate.name}: {why}; calibrating again")
        return Outcome()  # the next poll creates the new Job
    if job is None:
        manifest = manifests.build_calibration_job(ctx.body, ctx.spec, candidate, ctx.config.worker_image)
        manifest["metadata"]["annotations"] = {HASH_ANNOTATION: wanted, ROUND_ANNOTATION: str(round_)}
        await asyncio.to_thread(ctx.kube.apply, manifest)
        ctx.event("Normal", "Calibrating", f"{candidate.name}: calibration Job {name} started")
        return Outcome()
    if has_succeeded(job):
        _record(ctx, candidate, wanted)
        ctx.event("Normal", "Calibrated", f"{candidate.name}: calibrated exits at {manifests.exits_path(candidate)}")
        return Outcome(is_done=True)
    pods = await ctx.list("Pod", manifests.calibration_selector(ctx.name, candidate.name))
    if has_failed(job):
        return Outcome(failure=failure_reason(job, pods))
    for pod in pods:
        if (why := pod_health.failure(pod)) is not None and (pod.get("status") or {}).get("phase") != "Failed":
            return Outcome(failure=f"calibration Job {name}: {why}")  # a pod that can never start
    return Outcome()
