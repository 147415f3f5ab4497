"""One reconcile pass's inputs and what it remembers between passes.

``Runtime`` lives in kopf's per-object ``memo``; it is a cache, never the source of truth: after
an operator restart it is rebuilt from the status, the reports ConfigMap and the pods.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from helios_operator.k8s.children import desired_children
from helios_operator.k8s.config import OperatorConfig
from helios_operator.k8s.drift import drifted_paths, owned_content
from helios_operator.k8s.kube import IMMUTABLE, Body, Kube
from helios_operator.k8s.scrape import WorkerSample
from helios_operator.k8s.workers import ControlClient
from helios_operator.policy import AdaptState, Telemetry
from helios_operator.spec import HeliosDeploymentSpec


@dataclass
class Runtime:
    state: AdaptState | None = None
    samples: dict[str, WorkerSample] = field(default_factory=dict)
    last_scrape: float | None = None  # loop time
    tokens_per_second: float = 0.0
    num_scraped: int = 0
    last_telemetry: Telemetry | None = None
    round_prompts: list[str] | None = None  # prompts of a reassessment round (recent traffic)
    control_token: str | None = None  # read once from the HeliosDeployment's control Secret
    is_stale_policy_checked: bool = False  # without a control NetworkPolicy: looked for one left behind
    applied: dict[str, str] = field(default_factory=dict)  # kind/name -> digest of the manifest last applied


@dataclass
class Context:
    body: Mapping[str, Any]
    spec: HeliosDeploymentSpec
    status: dict[str, Any]  # the new status, edited during the pass
    runtime: Runtime
    kube: Kube
    http: httpx.AsyncClient | ControlClient  # a ControlClient once the pass has the control token
    config: OperatorConfig
    now: datetime
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def generation(self) -> int | None:
        return self.body["metadata"].get("generation")

    def event(self, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason, message))

    async def apply(self, manifest: Body) -> None:
        """Make the live child match ``manifest`` (level-triggered: read, compare, then create or patch).

        A missing child is created; one whose HELIOS-owned fields drifted is patched back, with an
        Event naming the fields. Pods are immutable: an existing one is left alone.
        """
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        desired_children().remember(self.namespace, manifest)
        key = f"{kind}/{name}"
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        unchanged = self.runtime.applied.get(key) == digest  # HELIOS wants what it wanted last pass
        live = await asyncio.to_thread(self.kube.get, kind, self.namespace, name)
        if live is None:
            await asyncio.to_thread(self.kube.apply, manifest)
            if key in self.runtime.applied:
                self.event("Warning", "ChildRecreated", f"{kind} {name} was missing; recreated it")
        elif kind not in IMMUTABLE and (drift := drifted_paths(owned_content(manifest), live)):
            await asyncio.to_thread(self.kube.apply, manifest)
            if unchanged:
                self.event("Warning", "DriftReverted", f"{kind} {name}: reverted {', '.join(drift[:5])}")
        self.runtime.applied[key] = digest

    async def list(self, kind: str, labels: Mapping[str, str]) -> list[Body]:
        return await asyncio.to_thread(self.kube.list, kind, self.namespace, labels)
