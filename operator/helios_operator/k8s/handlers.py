"""kopf handlers for HeliosDeployment: small functions that gather inputs and apply outputs.

``validate`` (create/update/resume) writes the SpecValid condition and rejects a spec that can
never work with ``kopf.PermanentError``; the ``reconcile`` timer runs one level-triggered pass
(``k8s.reconcile``) when one is due (``k8s.wakeups``: every tick, or at once after a spec edit or
a change to one of the deployment's worker pods, which ``pod_changed`` watches) and turns its
status and events into a patch and Kubernetes Events; ``child_changed`` watches the serving
Deployment and Service and repairs a deleted or edited one within seconds, from the manifest the
last pass applied (``k8s.children``).
Run with `helios operator`, or `kopf run` on this file.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import UTC, datetime
from typing import Any

import httpx
import kopf
from pydantic import ValidationError

from helios_operator.k8s.children import desired_children, owner_of
from helios_operator.k8s.conditions import READY, SPEC_VALID, set_condition
from helios_operator.k8s.config import OperatorConfig
from helios_operator.k8s.context import Context, Runtime
from helios_operator.k8s.drift import drifted_paths, owned_content
from helios_operator.k8s.kube import Kube
from helios_operator.k8s.manifests import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY
from helios_operator.k8s.reconcile import reconcile
from helios_operator.k8s.report import status_changes
from helios_operator.k8s.wakeups import CHECK_SECONDS, wakeups
from helios_operator.spec import API_GROUP, HeliosDeploymentSpec, describe_validation_error

VERSION, PLURAL = "v1alpha1", "heliosdeployments"
# kopf fixes a timer's interval when the handler is registered, so it is read here, once.
CONFIG = OperatorConfig.from_env()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.INFO
    # No watching of CRDs and Namespaces: the CRDs are installed before the operator (the chart does
    # it), and the operator then needs no cluster-wide read access in namespaced mode.
    settings.scanning.disabled = True
    # Progress in annotations: the status schema is structural and would prune kopf's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage()
    # A HeliosDeployment deleted while its reconcile pass is mid-await keeps kopf's finalizer until
    # the timer exits; kopf re-checks a still-running timer only every 60 s by default, so a
    # `kubectl delete` hung for a minute whenever the pass was busy (CI under load hit it).
    settings.background.cancellation_polling = 1.0
    memo.config = CONFIG
    memo.kube = Kube.from_environment()
    memo.http = httpx.AsyncClient(timeout=CONFIG.http_timeout_seconds)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    if "http" in memo:
        await memo.http.aclose()


@kopf.on.resume(API_GROUP, VERSION, PLURAL)
@kopf.on.create(API_GROUP, VERSION, PLURAL)
@kopf.on.update(API_GROUP, VERSION, PLURAL, field="spec")
def validate(body: kopf.Body, meta: kopf.Meta, status: kopf.Status, patch: kopf.Patch, **_: Any) -> None:
    wakeups().wake(meta["namespace"], meta["name"])  # a spec edit is acted on at once, not at the next tick
    now = datetime.now(UTC)
    conditions = list(status.get("conditions", []))
    generation = meta.get("generation")
    try:
        HeliosDeploymentSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as error:
        message = describe_validation_error(error)
        conditions = set_condition(conditions, SPEC_VALID, "False", "InvalidSpec", message, generation, now)
        conditions = set_condition(conditions, READY, "False", "InvalidSpec", message, generation, now)
        patch.status["conditions"] = conditions
        patch.status["phase"] = "Invalid"
        patch.status["observedGeneration"] = generation
        kopf.warn(body, reason="InvalidSpec", message=message)
        raise kopf.PermanentError(f"invalid spec: {message}") from None
    patch.status["conditions"] = set_condition(
        conditions, SPEC_VALID, "True", "Valid", "spec is valid", generation, now
    )
    if status.get("phase") in (None, "Invalid"):
        patch.status["phase"] = "Pending"


@kopf.timer(API_GROUP, VERSION, PLURAL, interval=min(CHECK_SECONDS, CONFIG.tick_seconds))
async def reconcile_timer(body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, patch: kopf.Patch, **_: Any) -> None:
    namespace, name = meta["namespace"], meta["name"]
    clock = asyncio.get_running_loop().time()
    if not wakeups().is_due(namespace, name, clock):
        return  # nothing changed since the last pass and no tick is due: no API calls
    wakeups().schedule(namespace, name, clock + memo.config.tick_seconds)
    try:
        spec = memo.config.apply_defaults(HeliosDeploymentSpec.model_validate(dict(body.get("spec") or {})))
    except ValidationError:
        return  # `validate` has said why in the status; nothing to do until the spec changes
    memo.setdefault("runtime", Runtime())
    old_status = copy.deepcopy(dict(body.get("status") or {}))
    owner = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": dict(body["metadata"])}
    ctx = Context(
        owner, spec, copy.deepcopy(old_status), memo.runtime, memo.kube, memo.http, memo.config, datetime.now(UTC)
    )
    try:
        retry_after = await reconcile(ctx)
    finally:
        for key, value in status_changes(old_status, ctx.status).items():
            patch.status[key] = value
        for kind, reason, message in ctx.events:
            (kopf.info if kind == "Normal" else kopf.warn)(body, reason=reason, message=message)
    if retry_after is not None:  # waiting on evaluation pods: look again sooner than a tick
        wakeups().schedule(namespace, name, clock + retry_after)


@kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGED_BY})
def pod_changed(body: kopf.Body, **_: Any) -> None:
    """A worker pod started, became (un)ready, failed or went: its HeliosDeployment's next pass is now."""
    meta = body["metadata"]
    deployment = (meta.get("labels") or {}).get(LABEL_DEPLOYMENT)
    if deployment:
        wakeups().wake(meta["namespace"], deployment)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY})
@kopf.on.event("", "v1", "services", labels={LABEL_MANAGED_BY: MANAGED_BY})
async def child_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A serving child was deleted or edited: put back what the last pass applied."""
    meta = body["metadata"]
    desired = desired_children().get(meta["namespace"], body["kind"], meta["name"])
    owner_ref = owner_of(dict(body))
    if desired is None or owner_ref is None or (owner_of(desired) or {}).get("uid") != owner_ref["uid"]:
        return
    deleted = event.get("type") == "DELETED"
    drift = [] if deleted else drifted_paths(owned_content(desired), dict(body))
    if not deleted and not drift:
        return
    owner = await asyncio.to_thread(memo.kube.get, "HeliosDeployment", meta["namespace"], owner_ref["name"])
    if owner is None or owner["metadata"].get("deletionTimestamp") or owner["metadata"]["uid"] != owner_ref["uid"]:
        desired_children().forget_owner(meta["namespace"], owner_ref["uid"])
        return  # the owner is going: the garbage collector is removing its children
    await asyncio.to_thread(memo.kube.apply, desired)
    what = "was deleted; recreated it" if deleted else f"drifted; reverted {', '.join(drift[:5])}"
    kopf.warn(owner, reason="ChildRepaired", message=f"{body['kind']} {meta['name']} {what}")
