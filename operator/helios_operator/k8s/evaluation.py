"""Evaluation rounds (HELIOS step 2): one pod per candidate, polled until every report is in.

A pod whose evaluation failed keeps running and answering ``failed`` with its reason (a
restart would only repeat it); the round waits, and its progress message, which becomes the
``Evaluated`` condition's message, says which candidate failed and why.

A round is numbered (``status.evaluationRound``) and its pods carry the number in name and
labels, so a restarted operator finds the pods of the round in progress instead of making new
ones, and a new round never collides with a terminating old pod.
"""

from __future__ import annotations

import asyncio
import json

from helios_contracts.reports import EvaluationReport
from helios_operator.k8s import manifests, workers
from helios_operator.k8s.context import Context
from helios_operator.k8s.manifests import LABEL_CANDIDATE
from helios_operator.spec import HeliosDeploymentSpec


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
    ctx.event("Normal", "Evaluating", f"evaluation round {round_} of {len(ctx.spec.candidates)} candidates: {why}")
    return round_


def normalise(report: EvaluationReport, spec: HeliosDeploymentSpec, pod_candidate: str) -> EvaluationReport:
    """Key the report by candidate name, whether the worker named it by name or by reference."""
    names = {c.name for c in spec.candidates}
    if report.model in names:
        return report
    by_ref = {c.model: c.name for c in spec.candidates}
    return report.model_copy(update={"model": by_ref.get(report.model, pod_candidate)})


async def poll_round(ctx: Context, round_: int, prompts: list[str]) -> tuple[list[EvaluationReport] | None, str]:
    """Make sure the round's pods exist and collect reports: (all of them or None, progress message)."""
    selector = manifests.evaluation_selector(ctx.name, round_)
    pods = {p["metadata"]["labels"].get(LABEL_CANDIDATE): p for p in await ctx.list("Pod", selector)}
    for candidate in ctx.spec.candidates:
        if candidate.name not in pods:
            pod = manifests.build_evaluation_pod(
                ctx.body, ctx.spec, candidate, round_, prompts, ctx.config.worker_image
            )
            await ctx.apply(pod)
    ready = {
        name: url
        for name, pod in pods.items()
        if name is not None
        and workers.is_ready(pod)
        and (url := workers.endpoint(pod, ctx.config.worker_port, ctx.config.allow_endpoint_annotation))
    }
    results = await asyncio.gather(
        *(workers.fetch_evaluation(ctx.http, url) for url in ready.values()), return_exceptions=True
    )
    reports: dict[str, EvaluationReport] = {}
    problems: list[str] = []
    failures: list[str] = []
    for candidate, result in zip(ready, results, strict=True):
        if isinstance(result, BaseException):
            problems.append(f"{candidate}: {result}")
        elif result.status == "failed":
            failures.append(f"{candidate}: {result.reason or 'no reason given'}")
        elif result.status == "done":
            for report in result.reports:
                normalised = normalise(report, ctx.spec, candidate)
                reports[normalised.model] = normalised
    waiting = sorted(c.name for c in ctx.spec.candidates if c.name not in reports)
    if not waiting:
        return [reports[c.name] for c in ctx.spec.candidates], f"round {round_}: all reports in"
    message = (
        f"round {round_}: {len(reports)} of {len(ctx.spec.candidates)} reports in; waiting for {', '.join(waiting)}"
    )
    if failures:
        message += f"; evaluation failed for {'; '.join(failures)}"
    if problems:
        message += f" (will retry: {'; '.join(problems)})"
    return None, message


async def finish_round(ctx: Context, round_: int, reports: list[EvaluationReport]) -> None:
    """Keep the reports (for restarts) and delete the round's pods."""
    await ctx.apply(manifests.build_reports_configmap(ctx.body, reports, round_))
    for pod in await ctx.list("Pod", manifests.evaluation_selector(ctx.name)):
        await asyncio.to_thread(ctx.kube.delete, "Pod", ctx.namespace, pod["metadata"]["name"])
    ctx.status["evaluationPending"] = False


async def stored_reports(ctx: Context) -> list[EvaluationReport] | None:
    """The reports of the last finished round, from its ConfigMap."""
    name = manifests.reports_configmap_name(ctx.name)
    configmap = await asyncio.to_thread(ctx.kube.get, "ConfigMap", ctx.namespace, name)
    text = ((configmap or {}).get("data") or {}).get(manifests.REPORTS_KEY)
    if not text:
        return None
    return [EvaluationReport.model_validate(item) for item in json.loads(text)]
