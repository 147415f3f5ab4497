"""One reconcile pass of a HeliosDeployment: Pending -> Evaluating -> Serving <-> Adapting, Degraded.

Level-triggered: every pass reads the status, the pods and the stored reports, so a pass after
an operator restart continues where the last one stopped. The policy decides (pure
``select``/``adapt``/``reselect``); this module gathers its inputs and carries decisions out.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from dataclasses import replace

from helios_contracts.reports import EvaluationReport
from helios_operator.k8s import evaluation, manifests, policy_state, workers
from helios_operator.k8s.children import desired_children
from helios_operator.k8s.conditions import (
    EVALUATED,
    PROGRESSING,
    READY,
    SHADOW_CHECKED,
    TELEMETRY_FRESH,
    Status,
    ready_summary,
    set_condition,
)
from helios_operator.k8s.context import Context
from helios_operator.k8s.report import (
    CHANGES,
    append_history,
    evaluation_table,
    helios_status_report,
    layers_text,
    telemetry_summary,
)
from helios_operator.k8s.scrape import WorkerSample, aggregate, scrape_all
from helios_operator.k8s.spec_changes import changed_parts, fingerprints
from helios_operator.policy import (
    AdaptState,
    Decision,
    adapt,
    apply,
    initial_state,
    record,
    reselect,
    select,
    with_reports,
)
from helios_operator.policy.telemetry import Telemetry
from helios_operator.shadow_round import ShadowScore, shadow_round

SERVING_PHASES = ("Serving", "Adapting", "Degraded")
_EVENT_REASONS = {
    "select": "Selected",
    "add_layers": "AddLayers",
    "drop_layers": "DropLayers",
    "switch_model": "SwitchModel",
    "reassess": "Reassess",
    "hold": "Hold",
}


def condition(ctx: Context, type_: str, status: Status, reason: str, message: str) -> None:
    ctx.status["conditions"] = set_condition(
        ctx.status.get("conditions", []), type_, status, reason, message, ctx.generation, ctx.now
    )


def note_decision(ctx: Context, decision: Decision) -> None:
    """Status history and a Kubernetes Event for ``decision``."""
    decision = decision if decision.timestamp else decision.model_copy(update={"timestamp": ctx.now})
    summary = decision.summary().model_dump(mode="json", by_alias=True, exclude_none=True)
    ctx.status["lastDecision"] = summary
    ctx.status["decisionHistory"] = append_history(ctx.status.get("decisionHistory", []), decision)
    kind = "Warning" if decision.kind == "hold" else "Normal"
    ctx.event(kind, _EVENT_REASONS[decision.kind], decision.reason)


def current_state(ctx: Context) -> AdaptState:
    if ctx.runtime.state is None:
        raise RuntimeError("no model is being served yet")  # callers check first; a bug otherwise
    return ctx.runtime.state


async def reconcile(ctx: Context) -> float | None:
    """Run one pass; the number of seconds to wait before the next one when waiting on evaluation."""
    runtime, status = ctx.runtime, ctx.status
    ctx.http = workers.ControlClient(ctx.http, await control_token(ctx))
    await control_network_policy(ctx)
    if runtime.state is None and status.get("phase") in SERVING_PHASES:
        await restore(ctx)
    if runtime.state is not None and runtime.state.model not in {c.name for c in ctx.spec.candidates}:
        runtime.state = None  # the model being served left the shortlist: choose again
    retry_after = None
    if runtime.state is None:
        retry_after = await initial_evaluation(ctx)
    else:
        await act_on_spec_changes(ctx)
        await serve(ctx)
        pods = await ctx.list("Pod", manifests.serving_selector(ctx.name))
        await monitor(ctx, pods)
        if status.get("evaluationPending"):
            await continue_reassessment(ctx, pods)
    await summarise(ctx)
    return retry_after


async def control_token(ctx: Context) -> str:
    """This HeliosDeployment's control token: read from its Secret, which is made once with a random token."""
    if ctx.runtime.control_token is None:
        name = manifests.control_secret_name(ctx.name)
        secret = await asyncio.to_thread(ctx.kube.get, "Secret", ctx.namespace, name)
        if secret is None:
            secret = manifests.build_control_secret(ctx.body, secrets.token_urlsafe(32))
            await asyncio.to_thread(ctx.kube.apply, secret)
        encoded = (secret.get("data") or {}).get(manifests.CONTROL_TOKEN_KEY, "")
        ctx.runtime.control_token = base64.b64decode(encoded).decode()
    return ctx.runtime.control_token


async def control_network_policy(ctx: Context) -> None:
    """The NetworkPolicy that keeps everyone but the operator off the workers' control port, when configured."""
    peer = ctx.config.control_peer
    if peer is not None:
        await ctx.apply(manifests.build_control_network_policy(ctx.body, peer.namespace, peer.pod_labels))
    elif not ctx.runtime.is_stale_policy_checked:  # turned off: remove one an earlier configuration made, once
        await _apply_if(ctx, False, manifests.build_control_network_policy(ctx.body, "", {}))
        ctx.runtime.is_stale_policy_checked = True


async def restore(ctx: Context) -> None:
    """Rebuild the adaptation state after a restart from the status and the stored reports."""
    reports = await evaluation.stored_reports(ctx)
    status = ctx.status  # the target (the last decision), which a rollout may not have reached yet
    model = status.get("targetModel") or status.get("currentModel")
    layers = status.get("targetLayers") or status.get("currentLayers")
    if not reports or layers is None or model not in {r.model for r in reports}:
        return
    kept = policy_state.decode(ctx.status.get("policyState"), reports, ctx.spec, ctx.spec.memory_budget, ctx.now)
    if kept is not None and (kept.model, kept.layers) == (model, layers):
        ctx.runtime.state = kept  # windows, cooldown, hysteresis and counters as the last operator left them
        return
    reason = f"resumed {model} with {layers} layers from status after an operator restart"
    decision = Decision(kind="select", model=model, layers=layers, reason=reason, timestamp=ctx.now)
    ctx.runtime.state = initial_state(decision, reports, ctx.spec, ctx.spec.memory_budget, ctx.now)


async def initial_evaluation(ctx: Context) -> float | None:
    status = ctx.status
    if status.get("phase") == "Failed" and status.get("observedGeneration") == ctx.generation:
        return None  # nothing fits; wait for a new spec
    if not status.get("evaluationPending"):
        evaluation.start_round(ctx, "choosing the model and layer count to serve")
    status["phase"] = "Evaluating"
    round_ = int(status["evaluationRound"])
    reports, message = await _collect(ctx, round_, None)
    if reports is None:
        condition(ctx, EVALUATED, "False", "Evaluating", message)
        return ctx.config.evaluation_poll_seconds
    await evaluation.finish_round(ctx, round_, reports)
    if not reports:
        status["phase"] = "Failed"
        condition(ctx, EVALUATED, "False", "AllCandidatesFailed", message)
        ctx.event("Warning", "AllCandidatesFailed", message)
        return None
    try:
        decision = select(reports, ctx.spec, ctx.spec.memory_budget, ctx.now)
    except ValueError as error:
        status["phase"] = "Failed"
        condition(ctx, EVALUATED, "False", "NoFeasibleOption", str(error))
        ctx.event("Warning", "NoFeasibleOption", str(error))
        return None
    ctx.runtime.state = initial_state(decision, reports, ctx.spec, ctx.spec.memory_budget, ctx.now)
    status["actedSpec"] = fingerprints(ctx.spec)
    condition(ctx, EVALUATED, "True", "Evaluated", message)
    note_decision(ctx, decision)
    await serve(ctx)
    status["phase"] = "Serving"
    return None


async def act_on_spec_changes(ctx: Context) -> None:
    """A spec edit while serving: new reports if what evaluation measures changed, else ``select`` again
    on the reports HELIOS has (no new evaluation) when what selection weighs changed."""
    status = ctx.status
    evaluation_parts, selection_parts = changed_parts(status.get("actedSpec"), ctx.spec)
    status["actedSpec"] = fingerprints(ctx.spec)
    if evaluation_parts:
        if not status.get("evaluationPending"):
            evaluation.start_round(ctx, f"the spec's {', '.join(evaluation_parts)} changed")
            ctx.runtime.round_prompts = None
        return  # a round in progress replaces the pods whose spec changed
    if not selection_parts:
        return
    state = replace(current_state(ctx), budget=ctx.spec.memory_budget)
    ctx.runtime.state = state
    names = {c.name for c in ctx.spec.candidates}
    reports = [r for r in state.reports.values() if r.model in names]
    why = f"spec changed ({', '.join(selection_parts)})"
    try:
        decision = select(reports, ctx.spec, ctx.spec.memory_budget, ctx.now)
    except ValueError as error:
        ctx.event("Warning", "NoFeasibleOption", f"{why}: {error}; keeping {state.model} with {state.layers} layers")
        return
    decision = decision.model_copy(update={"reason": f"{why}: {decision.reason}"})
    if (decision.model, decision.layers) == (state.model, state.layers):
        note_decision(ctx, decision)
        return
    await change(ctx, decision)


async def serve(ctx: Context) -> None:
    """The serving Deployment and Service for the current decision, created or reverted where they differ."""
    state = current_state(ctx)
    candidate = manifests.candidate_named(ctx.spec, state.model)
    histogram = state.report.exit_layer_histogram
    await ctx.apply(manifests.build_serving_configmap(ctx.body, state.layers))  # before any pod can start
    await ctx.apply(
        manifests.build_deployment(ctx.body, ctx.spec, candidate, state.layers, ctx.config.worker_image, histogram)
    )
    await ctx.apply(manifests.build_service(ctx.body))
    await _apply_if(ctx, ctx.spec.replicas > 1, manifests.build_pdb(ctx.body))
    shadow_name = manifests.shadow_deployment_name(ctx.name)
    if ctx.spec.monitoring.shadow.fraction > 0:
        total = state.report.num_layers_total
        await ctx.apply(
            manifests.build_shadow_deployment(ctx.body, ctx.spec, candidate, total, ctx.config.worker_image)
        )
    elif await asyncio.to_thread(ctx.kube.get, "Deployment", ctx.namespace, shadow_name) is not None:
        desired_children().forget(ctx.namespace, "Deployment", shadow_name)  # the watch must not bring it back
        await asyncio.to_thread(ctx.kube.delete, "Deployment", ctx.namespace, shadow_name)  # shadow check turned off


async def _apply_if(ctx: Context, wanted: bool, manifest: dict) -> None:
    """Apply ``manifest`` when wanted, else delete it if it exists."""
    kind, name = manifest["kind"], manifest["metadata"]["name"]
    if wanted:
        await ctx.apply(manifest)
    elif await asyncio.to_thread(ctx.kube.get, kind, ctx.namespace, name) is not None:
        desired_children().forget(ctx.namespace, kind, name)
        await asyncio.to_thread(ctx.kube.delete, kind, ctx.namespace, name)


async def shadow_check(ctx: Context, pods: list[dict]) -> None:
    """Move sampled requests from each serving worker of the current model to the scorer and back."""
    state = current_state(ctx)
    scorers = await ctx.list("Pod", manifests.shadow_selector(ctx.name))
    scorer = [p for p in scorers if _candidate(p) == state.model]
    scorer_url = next(iter(ready_endpoints(ctx, scorer, control=True).values()), None)
    if scorer_url is None:
        condition(ctx, SHADOW_CHECKED, "False", "ScorerNotReady", f"no ready shadow scorer of {state.model} yet")
        return
    serving = ready_endpoints(ctx, [p for p in pods if _candidate(p) == state.model], control=True)
    results = await asyncio.gather(
        *(shadow_round(ctx.http, url, scorer_url) for url in serving.values()), return_exceptions=True
    )
    failures = [
        f"{pod}: {result}" for pod, result in zip(serving, results, strict=True) if isinstance(result, Exception)
    ]
    scored = [r for r in results if isinstance(r, ShadowScore)]
    tokens, matches = sum(r.num_tokens for r in scored), sum(r.num_matches for r in scored)
    if failures:
        condition(ctx, SHADOW_CHECKED, "False", "ShadowRoundFailed", "; ".join(failures)[:1000])
    else:
        message = f"{tokens} sampled tokens of {len(serving)} workers scored at full depth, {matches} matched"
        condition(ctx, SHADOW_CHECKED, "True", "Scored", message)


def _candidate(pod: dict) -> str | None:
    return (pod["metadata"].get("labels") or {}).get(manifests.LABEL_CANDIDATE)


def ready_endpoints(ctx: Context, pods: list[dict], control: bool = False) -> dict[str, str]:
    """Ready pod -> base URL of its OpenAI API and metrics, or with ``control`` of its control API."""
    found = {}
    port = ctx.config.control_port if control else ctx.config.worker_port
    for pod in pods:
        url = workers.endpoint(pod, port, ctx.config.allow_endpoint_annotation, control)
        if workers.is_ready(pod) and url:
            found[pod["metadata"]["name"]] = url
    return found


async def monitor(ctx: Context, pods: list[dict]) -> None:
    """Scrape when the spec's interval has passed, fold the scrape in, and act on the decision."""
    runtime, spec = ctx.runtime, ctx.spec
    clock = asyncio.get_running_loop().time()
    if runtime.last_scrape is not None and clock - runtime.last_scrape < spec.monitoring.interval:
        return
    runtime.last_scrape = clock
    if spec.monitoring.shadow.fraction > 0:
        await shadow_check(ctx, pods)  # before the scrape, so that this scrape carries its score
    endpoints = ready_endpoints(ctx, pods)
    results = await scrape_all(ctx.http, endpoints, ctx.now)
    samples = {pod: result for pod, result in results.items() if isinstance(result, WorkerSample)}
    names = {c.model: c.name for c in spec.candidates} | {c.name: c.name for c in spec.candidates}
    scraped = aggregate(runtime.samples, samples, names, ctx.now)
    runtime.samples, runtime.num_scraped = samples, len(samples)
    runtime.tokens_per_second = scraped.tokens_per_second
    if scraped.telemetry is not None:
        runtime.last_telemetry = scraped.telemetry
        runtime.state = record(runtime.state, scraped.telemetry)  # type: ignore[arg-type]
    telemetry = runtime.last_telemetry
    is_fresh = telemetry is not None and telemetry.age_seconds(ctx.now) <= spec.monitoring.stale_after_seconds
    failures = [f"{pod}: {result}" for pod, result in results.items() if not isinstance(result, WorkerSample)]
    if is_fresh:
        message = f"{len(samples)} of {len(endpoints)} ready workers scraped" + (f"; {failures}" if failures else "")
        condition(ctx, TELEMETRY_FRESH, "True", "Scraped", message)
    decision = adapt(runtime.state, telemetry, spec, ctx.now)  # type: ignore[arg-type]
    await act(ctx, decision, telemetry, is_fresh, ready_endpoints(ctx, pods, control=True), failures)


async def act(
    ctx: Context,
    decision: Decision | None,
    telemetry: Telemetry | None,
    is_fresh: bool,
    control_endpoints: dict[str, str],
    failures: list[str],
) -> None:
    status, runtime = ctx.status, ctx.runtime
    previous_phase = status.get("phase")
    if decision is None:
        status["phase"] = "Serving"
        return
    if decision.kind == "hold":
        status["phase"] = "Adapting" if is_fresh else "Degraded"
        if not is_fresh:
            detail = "; ".join(failures) or "no ready worker to scrape"
            condition(ctx, TELEMETRY_FRESH, "False", "TelemetryMissing", f"{decision.reason} ({detail})")
        if status["phase"] != previous_phase:
            note_decision(ctx, decision)
        return
    if decision.kind == "reassess":
        if status.get("evaluationPending"):
            return  # a round is running: its end resets the counters
        runtime.state = apply(runtime.state, decision, ctx.now)  # type: ignore[arg-type]
        note_decision(ctx, decision)
        if not status.get("evaluationPending"):
            evaluation.start_round(ctx, decision.reason)
            runtime.round_prompts = None
            if ctx.spec.evaluation.prompts.kind == "recentTraffic":  # only then do workers keep prompts
                limit = ctx.spec.evaluation.prompts_per_candidate
                runtime.round_prompts = await workers.recent_prompts(ctx.http, control_endpoints, limit)
        status["phase"] = "Serving"
        return
    await change(ctx, decision)


async def change(ctx: Context, decision: Decision) -> None:
    """Carry out a change: layers in place in every live pod (and in the serving ConfigMap, so new pods
    agree; the template does not change, so nothing rolls), or a switch (a new template: a rollout)."""
    runtime = ctx.runtime
    state = current_state(ctx)
    is_layer_change = decision.model == state.model and decision.layers != state.layers
    runtime.state = apply(state, decision, ctx.now)
    note_decision(ctx, decision)
    await serve(ctx)  # the ConfigMap first: a pod starting from now on reads the new count
    if is_layer_change:
        pods = await ctx.list("Pod", manifests.serving_selector(ctx.name))
        targets = ready_endpoints(ctx, [p for p in pods if _candidate(p) == decision.model], control=True)
        failed = await workers.post_layers_all(ctx.http, targets, decision.layers)
        if failed:
            ctx.event("Warning", "LayerChangeFailed", f"in-place change to {decision.layers} layers failed: {failed}")
    ctx.status["phase"] = "Adapting"


async def _collect(
    ctx: Context, round_: int, prompts: list[str] | None, one_at_a_time: bool = False
) -> tuple[list[EvaluationReport] | None, str]:
    """The round's reports: stored already if it finished before a restart, else polled from its pods."""
    finished = await evaluation.finished_reports(ctx, round_)
    if finished is not None:
        return finished, f"round {round_}: finished before the operator restarted; its reports are kept"
    if prompts is None:
        prompts = await evaluation.spec_prompts(ctx)
    return await evaluation.poll_round(ctx, round_, prompts, one_at_a_time)


async def continue_reassessment(ctx: Context, pods: list[dict]) -> None:
    runtime = ctx.runtime
    round_ = int(ctx.status["evaluationRound"])
    reports, message = await _collect(ctx, round_, runtime.round_prompts, one_at_a_time=True)
    if reports is None:
        condition(ctx, EVALUATED, "False", "Reassessing", message)
        return
    state = current_state(ctx)
    # A candidate that failed this round keeps no say, except the one being served: it is running,
    # so its last report stands until a round measures it again.
    if state.model not in {r.model for r in reports}:
        reports = [*reports, state.report]
    await evaluation.finish_round(ctx, round_, reports)
    runtime.round_prompts = None
    condition(ctx, EVALUATED, "True", "Evaluated", message)
    try:
        decision = reselect(state, reports, ctx.spec, ctx.now)
    except ValueError as error:
        ctx.event("Warning", "ReassessmentFailed", str(error))
        return
    # Requests served while the round ran are not a reason for the next one: count from its end.
    runtime.state = replace(with_reports(state, reports), num_requests_since_assessment=0, last_assessment_at=ctx.now)
    if decision.kind in CHANGES:
        await change(ctx, decision)
    else:
        note_decision(ctx, decision)


async def rollout_progress(ctx: Context, old_models: list[str]) -> None:
    """The Progressing condition: the serving Deployment's own when it reports one, else what the pods show."""
    deployment = await asyncio.to_thread(ctx.kube.get, "Deployment", ctx.namespace, ctx.name) or {}
    own = next(
        (c for c in (deployment.get("status") or {}).get("conditions") or [] if c.get("type") == "Progressing"), None
    )
    if own is not None:
        status, reason, message = (
            own.get("status", "Unknown"),
            own.get("reason") or "Progressing",
            own.get("message", ""),
        )
        if status == "False" and reason != (_condition(ctx, PROGRESSING) or {}).get("reason"):
            ctx.event("Warning", "RolloutStuck", f"serving Deployment: {reason}: {message}")
    elif old_models:
        status, reason = "True", "ReplicaSetUpdated"
        message = f"rolling out {ctx.runtime.state.model}; pods of {', '.join(old_models)} still serve"  # type: ignore[union-attr]
    else:
        status, reason, message = "True", "NewReplicaSetAvailable", "every serving pod runs the target model"
    condition(ctx, PROGRESSING, status, reason, message)  # type: ignore[arg-type]


def _condition(ctx: Context, type_: str) -> dict | None:
    return next((c for c in ctx.status.get("conditions", []) if c.get("type") == type_), None)


async def summarise(ctx: Context) -> None:
    """Replicas, the current setting, the Ready summary, and the HeliosStatus object."""
    status, runtime, state = ctx.status, ctx.runtime, ctx.runtime.state
    pods = await ctx.list("Pod", manifests.serving_selector(ctx.name))
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    status["replicas"] = len(live)
    status["readyReplicas"] = sum(workers.is_ready(p) for p in live)
    status["selector"] = manifests.selector_string(manifests.serving_selector(ctx.name))
    if state is not None:
        total = state.report.num_layers_total
        status.update(targetModel=state.model, targetLayers=state.layers)
        old = sorted({c for p in live if (c := _candidate(p)) is not None} - {state.model})
        await rollout_progress(ctx, old)
        if not old:  # no pod serves another model any more: the rollout (if any) is complete
            status.update(currentModel=state.model, currentLayers=state.layers, layersTotal=total)
            status["layers"] = layers_text(state.layers, total)
        status["breachRate"] = round(state.breaches.breach_rate, 4)
        status["tokensPerSecond"] = round(runtime.tokens_per_second, 3)
        status["policyState"] = policy_state.encode(state)
    ready = ready_summary(status.get("phase", "Pending"), status["readyReplicas"], ctx.spec.replicas)
    condition(ctx, READY, *ready)
    status["observedGeneration"] = ctx.generation
    table = (
        []
        if state is None
        else evaluation_table(state.reports.values(), ctx.spec, state.budget, (state.model, state.layers))
    )
    summary = None
    if state is not None and runtime.last_telemetry is not None:
        summary = telemetry_summary(
            state,
            runtime.last_telemetry.observed_at,
            status["readyReplicas"],
            runtime.num_scraped,
            runtime.tokens_per_second,
        )
    candidate = None if state is None else manifests.candidate_named(ctx.spec, state.model).model
    report = helios_status_report(status, table, telemetry=summary, model_ref=candidate)
    await ctx.apply(manifests.build_helios_status(ctx.body, report))
