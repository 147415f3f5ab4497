"""Which worker serves, and moving traffic between workers without failing a request.

A model switch is a hand-over, in this order: start the new worker and wait until it is
ready (the old one keeps serving meanwhile), point the proxy at it, wait until the requests
still on the old worker have finished, then stop the old worker (SIGTERM drains anything a
client sent it directly; SIGKILL by PID after the drain timeout). If the new worker never
becomes ready, the old one simply keeps serving. A layer change of the same model is done in
place with ``POST /v1/helios/layers``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import httpx

from helios_operator.local.proxy import Backend, Proxy
from helios_operator.local.supervisor import WorkerFailed, WorkerSettings

LAYERS_PATH = "/v1/helios/layers"


class Worker(Protocol):
    url: str
    settings: WorkerSettings

    @property
    def pid(self) -> int: ...

    @property
    def is_running(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...

    def log_tail(self) -> str: ...


class Starter(Protocol):
    async def start(self, settings: WorkerSettings) -> Worker: ...

    async def stop(self, worker: Worker) -> int | None: ...


class LayerChangeFailed(RuntimeError):
    """The worker refused or failed an in-place layer change."""


async def served_model_id(client: httpx.AsyncClient, url: str, fallback: str) -> str:
    """The id the worker's OpenAI API answers to (first of /v1/models), or ``fallback``."""
    try:
        response = await client.get(f"{url}/v1/models", timeout=5.0)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return fallback


class Serving:
    """The current worker behind ``proxy``; every change goes through here."""

    def __init__(
        self,
        proxy: Proxy,
        starter: Starter,
        client: httpx.AsyncClient,
        drain_timeout: float = 30.0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.proxy = proxy
        self.starter = starter
        self.client = client
        self.drain_timeout = drain_timeout
        self.worker: Worker | None = None
        self._say = on_event or (lambda _message: None)

    async def _attach(self, worker: Worker) -> None:
        model_id = await served_model_id(self.client, worker.url, worker.settings.model_ref)
        self.proxy.set_backend(Backend(url=worker.url, model=worker.settings.model, model_id=model_id))
        self.worker = worker

    async def start(self, settings: WorkerSettings) -> Worker:
        """First worker (or a replacement for one that died): start, then route to it."""
        worker = await self.starter.start(settings)
        await self._attach(worker)
        self._say(f"worker {settings.model} with {settings.layers} layers serving at {worker.url} (pid {worker.pid})")
        return worker

    async def hand_over(self, settings: WorkerSettings) -> Worker:
        """Switch to a new worker with zero failed requests (see the module docstring)."""
        old = self.worker
        worker = await self.starter.start(settings)  # WorkerFailed here leaves ``old`` serving
        await self._attach(worker)
        if old is not None:
            is_drained = await self.proxy.wait_drained(old.url, self.drain_timeout)
            await self.starter.stop(old)
            self._say(
                f"handed over from {old.settings.model} (pid {old.pid}) to {settings.model} (pid {worker.pid})"
                + ("" if is_drained else f"; old worker still busy after {self.drain_timeout:g} s, stopped anyway")
            )
        return worker

    async def set_layers(self, layers: int) -> None:
        """Change the current worker's loaded layers in place."""
        if self.worker is None:
            raise LayerChangeFailed("no worker is serving")
        url = f"{self.worker.url}{LAYERS_PATH}"
        try:
            response = await self.client.post(url, json={"layers": layers}, timeout=120.0)
        except httpx.HTTPError as error:
            raise LayerChangeFailed(f"{url}: {error}") from error
        if response.status_code != 200:
            raise LayerChangeFailed(f"{url} answered {response.status_code}: {response.text[:300]}")
        self.worker.settings = replace(self.worker.settings, layers=layers)

    def detach(self) -> None:
        """The worker died: hold new requests (bounded) until a replacement is attached."""
        self.proxy.set_backend(None)
        self.worker = None

    async def stop(self) -> None:
        if self.worker is not None:
            self.proxy.set_backend(None)
            await self.proxy.wait_drained(self.worker.url, self.drain_timeout)
            await self.starter.stop(self.worker)
            self.worker = None


__all__ = ["LayerChangeFailed", "Serving", "WorkerFailed"]
