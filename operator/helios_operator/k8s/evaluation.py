"""Evaluation rounds (HELIOS step 2): one pod per candidate, polled until every candidate has a
report or has failed.

A candidate fails, and the round goes on without it, when its pod fails, is evicted, cannot
pull or create its container, crash-loops (``k8s.pod_health``), when its worker reports that
the evaluation failed, or when it has no report by the round's deadline
(``spec.evaluation.timeout``). Each failure is kept in ``status.failedCandidates`` with its
reason and announced by an Event; selection runs among the candidates that reported.

A round is numbered (``status.evaluationRound``) and its pods carry the number in name and
labels, so a restarted operator finds the pods of the round in progress instead of making new
ones, and a new round never collides with a terminating old pod. Each pod carries the hash of
its spec: a pod whose spec HELIOS would now write differently (a new image, new resources) is
replaced, and a candidate that failed is tried again once its pod spec changes.

A candidate with ``calibrate`` gets its evaluation pod only once its calibration Job has
succeeded (``k8s.calibration``); a failed Job fails the candidate like a failed pod.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from helios_contracts.reports import EvaluationReport
from helios_operator.k8s import calibration, manifests, pod_health, workers
from helios_operator.k8s.context import Context
from helios_operator.k8s.manifests import LABEL_CANDIDATE
from helios_operator.spec import Candidate, HeliosDeploymentSpec

SPEC_HASH_ANNOTATION = "helios.dev/spec-hash"
EVAL_PROMPTS_ENV = "HELIOS_EVAL_PROMPTS"  # manifests.build_evaluation_pod sets it


async def spec_prompts(ctx: Context) -> list[str]:
    """Prompts from the spec's source; empty for recent traffic (the workers' own, then)."""
    source = ctx.spec.evaluation.prompts
    if source.inline is not None:
        return list(source.inline)
    if source.config_map_ref is not None:
        ref = source.config_map_ref
        configmap = await asyncio.to_thread(ctx.kube.get, "ConfigMap", ctx.namespace, ref.name)
        text = ((configmap or {}).get("data") or {}).get(ref.key, "")
        return [line for line in text.splitlines() if line.strip()]
    return []


def start_round(ctx: Context, why: str) -> int:
    round_ = int(ctx.status.get("evaluationRound") or 0) + 1
    ctx.status["evaluationRound"] = round_
    ctx.status["evaluationPending"] = True
    ctx.status["evaluationStartedAt"] = ctx.now.isoformat()
    ctx.status["failedCandidates"] = []
    ctx.event("Normal", "Evaluating", f"evaluation round {round_} of {len(ctx.spec.candidates)} candidates: {why}")
    return round_


def spec_hash(pod: Mapping[str, Any]) -> str:
    """The pod spec's hash, prompts aside: a round's prompts are its own (after a restart a reassessment
    round's recent-traffic prompts are no longer known), not a reason to replace its pods."""
    spec = json.loads(json.dumps(pod["spec"]))
    for container in spec["containers"]:
        container["env"] = [e for e in container.get("env", []) if e.get("name") != EVAL_PROMPTS_ENV]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _desired_pod(
    ctx: Context, candidate: Candidate, round_: int, prompts: list[str], calibration_hash: str | None = None
) -> dict[str, Any]:
    """The candidate's evaluation pod; with calibrated exits its hash covers their inputs, so a new
    calibration replaces the pod and retries a candidate whose calibration failed."""
    pod = manifests.build_evaluation_pod(ctx.body, ctx.spec, candidate, round_, prompts, ctx.config.worker_image)
    digest = spec_hash(pod)
    if calibration_hash is not None:
        digest = hashlib.sha256(f"{digest}/{calibration_hash}".encode()).hexdigest()[:16]
    pod["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = digest
    return pod


def _fail(ctx: Context, failed: dict[str, dict[str, str]], name: str, reason: str, pod_hash: str) -> None:
    failed[name] = {"name": name, "reason": reason, "specHash": pod_hash}
    ctx.event("Warning", "CandidateFailed", f"evaluation of {name} failed: {reason}")


def _waited_seconds(ctx: Context, live: Mapping[str, Any], candidate: str | None) -> float:
    """How long the round (or, one at a time, ``candidate``'s pod) has been waiting for its reports."""
    if candidate is not None:
        created = (live.get(candidate) or {}).get("metadata", {}).get("creationTimestamp")
        return (ctx.now - datetime.fromisoformat(created)).total_seconds() if created else 0.0
    started = ctx.status.get("evaluationStartedAt")
    if not started:
        ctx.status["evaluationStartedAt"] = ctx.now.isoformat()  # a round from before deadlines existed
        return 0.0
    return (ctx.now - datetime.fromisoformat(started)).total_seconds()


def normalise(report: EvaluationReport, spec: HeliosDeploymentSpec, pod_candidate: str) -> EvaluationReport:
    """Key the report by candidate name, whether the worker named it by name or by reference."""
    names = {c.name for c in spec.candidates}
    if report.model in names:
        return report
    by_ref = {c.model: c.name for c in spec.candidates}
    return report.model_copy(update={"model": by_ref.get(report.model, pod_candidate)})


async def _partial_reports(ctx: Context, round_: int) -> tuple[dict[str, EvaluationReport], list[str]]:
    """(The reports a one-at-a-time round has kept so far, the keys another round left behind)."""
    name = manifests.partial_reports_configmap_name(ctx.name)
    data = ((await asyncio.to_thread(ctx.kube.get, "ConfigMap", ctx.namespace, name)) or {}).get("data") or {}
    if data.get("round") != str(round_):
        return {}, [key for key in data if key != "round"]
    return {key: EvaluationReport.model_validate_json(value) for key, value in data.items() if key != "round"}, []


async def poll_round(
    ctx: Context, round_: int, prompts: list[str], one_at_a_time: bool = False
) -> tuple[list[EvaluationReport] | None, str]:
    """Keep the round's pods as HELIOS wants them and collect reports.

    With ``one_at_a_time`` (reassessments) only one candidate's pod exists at a time: once its
    report is in, the report is kept in a ConfigMap and the pod deleted before the next starts.
    Returns (the reports of the candidates that did not fail, or None while any is still
    running; a progress message). An empty list means every candidate failed.
    """
    selector = manifests.evaluation_selector(ctx.name, round_)
    live = {p["metadata"]["labels"].get(LABEL_CANDIDATE): p for p in await ctx.list("Pod", selector)}
    failed = {f["name"]: f for f in ctx.status.get("failedCandidates") or []}
    kept, stale = await _partial_reports(ctx, round_) if one_at_a_time else ({}, [])
    hashes: dict[str, str] = {}
    is_one_running = False
    for candidate in ctx.spec.candidates:
        calibration_hash = None if candidate.calibrate is None else await calibration.inputs_hash(ctx, candidate)
        pod = _desired_pod(ctx, candidate, round_, prompts, calibration_hash)
        name, wanted = candidate.name, pod["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        hashes[name] = wanted
        if name in failed and failed[name].get("specHash") != wanted:
            del failed[name]  # its pod spec changed since it failed: try again
        if name in failed or name in kept:
            continue
        if one_at_a_time and is_one_running:
            continue  # waits for the candidate before it
        is_one_running = True
        if calibration_hash is not None:  # its evaluation waits for its calibrated exits
            outcome = await calibration.ensure(ctx, candidate, calibration_hash, round_)
            if outcome.failure is not None:
                _fail(ctx, failed, name, outcome.failure, wanted)
            if not outcome.is_done:
                continue
        current = live.get(name)
        if current is not None and (current["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION) != wanted:
            await asyncio.to_thread(ctx.kube.delete, "Pod", ctx.namespace, current["metadata"]["name"])
            ctx.event("Normal", "EvaluationPodReplaced", f"{name}: its pod spec changed; replacing the pod")
            live.pop(name)
            continue  # the old pod terminates first (same name); the next poll creates the new one
        if current is None:
            await ctx.apply(pod)
        elif why := pod_health.failure(current):
            _fail(ctx, failed, name, why, wanted)
    ready = {
        name: url
        for name, pod in live.items()
        if name in hashes
        and name not in failed
        and name not in kept
        and workers.is_ready(pod)
        and (url := workers.endpoint(pod, ctx.config.control_port, ctx.config.allow_endpoint_annotation, True))
    }
    results = await asyncio.gather(
        *(workers.fetch_evaluation(ctx.http, url) for url in ready.values()), return_exceptions=True
    )
    reports: dict[str, EvaluationReport] = dict(kept)
    problems: list[str] = []
    for candidate, result in zip(ready, results, strict=True):
        if isinstance(result, BaseException):
            problems.append(f"{candidate}: {result}")
        elif result.status == "failed":
            _fail(
                ctx, failed, candidate, f"the worker reported: {result.reason or 'no reason given'}", hashes[candidate]
            )
        elif result.status == "done":
            for report in result.reports:
                normalised = normalise(report, ctx.spec, candidate)
                reports[normalised.model] = normalised
    if one_at_a_time and (new := {name: report for name, report in reports.items() if name not in kept}):
        await ctx.apply(manifests.build_partial_reports_configmap(ctx.body, round_, reports, stale))
        for name in new:  # its report is kept: free its resources for the next candidate
            if name in live:
                await asyncio.to_thread(ctx.kube.delete, "Pod", ctx.namespace, live[name]["metadata"]["name"])
    waiting = [c.name for c in ctx.spec.candidates if c.name not in reports and c.name not in failed]
    timeout = ctx.spec.evaluation.timeout
    # A calibrated candidate's deadline runs from its evaluation pod (its Job has a deadline of its own).
    calibrated = {c.name for c in ctx.spec.candidates if c.calibrate is not None}
    late = [
        name
        for name in (waiting[:1] if one_at_a_time else waiting)
        if _waited_seconds(ctx, live, name if one_at_a_time or name in calibrated else None) > timeout
    ]
    for name in late:
        waiting.remove(name)
        reason = f"no report within {timeout:g}s ({pod_health.pending_reason(live.get(name))})"
        _fail(ctx, failed, name, reason, hashes[name])
    ctx.status["failedCandidates"] = [failed[c.name] for c in ctx.spec.candidates if c.name in failed]
    failures = "; ".join(f"{name}: {f['reason']}" for name, f in failed.items())
    if not waiting:
        done = [reports[c.name] for c in ctx.spec.candidates if c.name in reports]
        message = f"round {round_}: {len(done)} of {len(ctx.spec.candidates)} reports in"
        return done, message + (f"; failed: {failures}" if failures else "")
    message = (
        f"round {round_}: {len(reports)} of {len(ctx.spec.candidates)} reports in; waiting for {', '.join(waiting)}"
    )
    if failures:
        message += f"; failed: {failures}"
    if problems:
        message += f" (will retry: {'; '.join(problems)})"
    return None, message


async def finish_round(ctx: Context, round_: int, reports: list[EvaluationReport]) -> None:
    """Keep the reports (for restarts) and delete the round's pods."""
    await ctx.apply(manifests.build_reports_configmap(ctx.body, reports, round_))
    for pod in await ctx.list("Pod", manifests.evaluation_selector(ctx.name)):
        await asyncio.to_thread(ctx.kube.delete, "Pod", ctx.namespace, pod["metadata"]["name"])
    ctx.status["evaluationPending"] = False


async def finished_reports(ctx: Context, round_: int) -> list[EvaluationReport] | None:
    """The reports of round ``round_`` if it already finished (an operator stopped between storing its
    reports and patching the status): the round is then never run again."""
    configmap = await asyncio.to_thread(
        ctx.kube.get, "ConfigMap", ctx.namespace, manifests.reports_configmap_name(ctx.name)
    )
    if ((configmap or {}).get("data") or {}).get("round") != str(round_):
        return None
    return await stored_reports(ctx)


async def stored_reports(ctx: Context) -> list[EvaluationReport] | None:
    """The reports of the last finished round, from its ConfigMap."""
    name = manifests.reports_configmap_name(ctx.name)
    configmap = await asyncio.to_thread(ctx.kube.get, "ConfigMap", ctx.namespace, name)
    text = ((configmap or {}).get("data") or {}).get(manifests.REPORTS_KEY)
    if not text:
        return None
    return [EvaluationReport.model_validate(item) for item in json.loads(text)]
