"""Talking to worker pods: where they are, their evaluation reports, layer changes, recent prompts.

``GET /v1/helios/evaluation`` of a worker in evaluation mode answers an ``EvaluationStatus``:
``{"status": "pending"|"running"|"done"|"failed", "reports": [...], "reason": ...}`` (the
worker's ``EvaluationService.provider``; running ones add ``current``/``completed``/``total``).

Every call takes an ``httpx.AsyncClient`` whose timeout bounds it; callers gather calls to
many pods concurrently. Errors are raised as ``WorkerError`` with the pod's endpoint in the
message, so a handler can say which pod failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal, Self

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from helios_contracts.reports import EvaluationReport
from helios_operator.k8s.manifests import CONTROL_ENDPOINT_ANNOTATION, ENDPOINT_ANNOTATION


class WorkerError(RuntimeError):
    """A worker pod did not answer as the contract says."""


class EvaluationStatus(BaseModel):
    """An evaluation worker's progress: reports once ``done``, a reason once ``failed``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["pending", "running", "done", "failed"]
    reports: list[EvaluationReport] = []
    reason: str | None = None
    current: str | None = None
    completed: int | None = None
    total: int | None = None

    @model_validator(mode="after")
    def _done_has_reports(self) -> Self:
        if self.status == "done" and not self.reports:
            raise ValueError("status 'done' without reports")
        return self


def is_ready(pod: Mapping[str, Any]) -> bool:
    """Running, not terminating, and its Ready condition is True."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )


class ControlClient:
    """The operator's HTTP client for one HeliosDeployment's workers: every request carries its control token.

    It offers the three calls the operator makes (``get``, ``post``, ``request``), so code that talks to
    workers takes either this or a plain ``httpx.AsyncClient``.
    """

    def __init__(self, client: httpx.AsyncClient, token: str | None) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(url, headers=self.headers, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.client.post(url, headers=self.headers, **kwargs)

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, url, headers=self.headers, **kwargs)


def endpoint(pod: Mapping[str, Any], port: int, allow_annotation: bool, control: bool = False) -> str | None:
    """The pod's base URL for its OpenAI API (or with ``control``, its control API): the pod IP and
    the port, or the endpoint annotation where allowed."""
    annotations = pod.get("metadata", {}).get("annotations") or {}
    key = CONTROL_ENDPOINT_ANNOTATION if control else ENDPOINT_ANNOTATION
    if allow_annotation and annotations.get(key):
        return str(annotations[key]).rstrip("/")
    ip = (pod.get("status") or {}).get("podIP")
    return f"http://{ip}:{port}" if ip else None


async def _get_json(client: httpx.AsyncClient, url: str) -> Any:
    try:
        response = await client.get(url)
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as error:
        raise WorkerError(f"GET {url}: {error!r}") from error


async def fetch_evaluation(client: httpx.AsyncClient, base: str) -> EvaluationStatus:
    """The pod's evaluation status (with its reports once done); WorkerError if it breaks the contract."""
    url = f"{base}/v1/helios/evaluation"
    document = await _get_json(client, url)
    try:
        return EvaluationStatus.model_validate(document)
    except ValidationError as error:
        raise WorkerError(f"GET {url}: not an evaluation status: {error}") from error


async def post_layers(client: httpx.AsyncClient, base: str, layers: int) -> None:
    url = f"{base}/v1/helios/layers"
    try:
        response = await client.post(url, json={"layers": layers})
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise WorkerError(f"POST {url}: {error!r}") from error


async def post_layers_all(client: httpx.AsyncClient, bases: Mapping[str, str], layers: int) -> dict[str, str]:
    """POST the layer count to every pod at once; pod -> error text for those that failed."""
    results = await asyncio.gather(
        *(post_layers(client, url, layers) for url in bases.values()), return_exceptions=True
    )
    return {pod: str(result) for pod, result in zip(bases, results, strict=True) if isinstance(result, Exception)}


async def recent_prompts(client: httpx.AsyncClient, bases: Mapping[str, str], limit: int) -> list[str]:
    """Recent real prompts from the workers' buffers, newest pods' first, without duplicates."""
    results = await asyncio.gather(
        *(_get_json(client, f"{url}/v1/helios/recent-prompts") for url in bases.values()), return_exceptions=True
    )
    prompts: list[str] = []
    for result in results:
        if isinstance(result, dict) and isinstance(result.get("prompts"), list):
            prompts += [p for p in result["prompts"] if isinstance(p, str) and p and p not in prompts]
    return prompts[:limit]
