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

from helios_operator.k8s.config import OperatorConfig
from helios_operator.k8s.kube import Body, Kube
from helios_operator.k8s.scrape import WorkerSample
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
    applied: dict[str, str] = field(default_factory=dict)  # object key -> digest of what was applied
    generation: int | None = None


@dataclass
class Context:
    body: Mapping[str, Any]
    spec: HeliosDeploymentSpec
    status: dict[str, Any]  # the new status, edited during the pass
    runtime: Runtime
    kube: Kube
    http: httpx.AsyncClient
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

    async def apply(self, manifest: Body, force: bool = False) -> None:
        """Create-or-patch ``manifest`` unless this exact content was already applied."""
        key = f"{manifest['kind']}/{manifest['metadata']['name']}"
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        if not force and self.runtime.applied.get(key) == digest:
            return
        await asyncio.to_thread(self.kube.apply, manifest)
        self.runtime.applied[key] = digest

    async def list(self, kind: str, labels: Mapping[str, str]) -> list[Body]:
        return await asyncio.to_thread(self.kube.list, kind, self.namespace, labels)
