"""uvicorn, with a drain on SIGTERM: what Kubernetes sends before it kills a pod.

First SIGTERM (or Ctrl-C): ``/ready`` turns 503 and new requests get 503 while the port stays
open, in-flight requests get ``drain_seconds`` to finish (then are aborted), and the server
exits 0. A second signal stops at once. uvicorn's own handler would re-raise the signal after
shutdown (exit status -15), so this one replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Coroutine
from types import FrameType
from typing import Any

import uvicorn

from helios_worker.server.state import WorkerState

logger = logging.getLogger("helios.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, worker: WorkerState, drain_seconds: float) -> None:
        super().__init__(config)
        self.worker = worker
        self.drain_seconds = drain_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._is_drain_requested = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn(self._exit_on_load_failure())
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._is_drain_requested or self._loop is None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            return
        self._is_drain_requested = True
        # A signal handler runs between bytecodes of the loop's thread: hand over thread-safely.
        self._loop.call_soon_threadsafe(self._spawn, self._drain_then_exit())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # keep a reference: the loop holds tasks only weakly
        task.add_done_callback(self._tasks.discard)

    async def _drain_then_exit(self) -> None:
        logger.info("draining: up to %.0f s for in-flight requests", self.drain_seconds)
        try:
            await self.worker.drain(self.drain_seconds)
        finally:
            self.should_exit = True

    async def _exit_on_load_failure(self) -> None:
        await self.worker.failed.wait()
        self.should_exit = True
