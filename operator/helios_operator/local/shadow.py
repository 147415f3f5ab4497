"""The shadow accuracy check of ``helios run``: replay served requests at full depth.

With ``monitoring.shadow.fraction > 0`` the serving worker keeps that share of its finished
greedy requests. A second worker of the served model with every layer loaded (the scorer)
replays them teacher-forced; the serving worker records the score, so the agreement reaches
its /metrics as ``helios_shadow_tokens_total`` / ``helios_shadow_matches_total`` and from there
the policy's shadow window like any other counter. Each monitoring round moves the samples:
serving worker -> scorer -> serving worker. The scorer starts in the background (the loop does
not wait for a model to load) and is replaced when the served model changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import httpx

from helios_operator.local.serving import Starter, Worker
from helios_operator.local.supervisor import WorkerFailed, WorkerSettings
from helios_operator.shadow_round import ShadowFailed, ShadowScore, shadow_round

__all__ = ["ShadowCheck", "ShadowFailed", "ShadowScore", "shadow_round"]


class ShadowCheck:
    """Owns the scorer worker; ``step`` once per monitoring round, ``stop`` on exit."""

    def __init__(self, starter: Starter, client: httpx.AsyncClient, say: Callable[[str], None]) -> None:
        self.starter = starter
        self.client = client
        self.scorer: Worker | None = None
        self._say = say
        self._starting: asyncio.Task[Worker] | None = None
        self._wanted: WorkerSettings | None = None
        self._problem: str | None = None

    async def step(self, serving: Worker, scorer_settings: WorkerSettings) -> ShadowScore | None:
        """Make sure a scorer for the served model runs (or is starting); score if it is ready."""
        scorer = await self._scorer_for(scorer_settings)
        if scorer is None:
            return None
        try:
            score = await shadow_round(self.client, serving.url, scorer.url)
        except ShadowFailed as error:
            self._report(f"shadow check failed: {error}")
            return None
        self._problem = None
        return score

    async def _scorer_for(self, settings: WorkerSettings) -> Worker | None:
        if self._wanted != settings:  # first round, or the served model changed
            await self.stop()
            self._wanted = settings
            self._starting = asyncio.create_task(self.starter.start(settings))
        if self.scorer is not None and not self.scorer.is_running:
            self._report(f"shadow scorer (pid {self.scorer.pid}) exited with status {self.scorer.returncode}")
            self.scorer = None
            self._starting = asyncio.create_task(self.starter.start(settings))
        if self._starting is not None and self._starting.done():
            task, self._starting = self._starting, None
            try:
                self.scorer = task.result()
            except WorkerFailed as error:
                self._report(f"shadow scorer for {settings.model} did not start: {error}")
                self._starting = asyncio.create_task(self.starter.start(settings))
                return None
            self._say(f"shadow scorer {settings.model} with all {settings.layers} layers at {self.scorer.url}")
        return self.scorer

    def _report(self, problem: str) -> None:
        if problem != self._problem:  # once per distinct problem, not every round
            self._say(problem)
        self._problem = problem

    async def stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()  # the supervisor stops a worker it was starting
            with contextlib.suppress(asyncio.CancelledError, WorkerFailed):
                await self._starting
            self._starting = None
        if self.scorer is not None:
            await self.starter.stop(self.scorer)
            self.scorer = None
        self._wanted = None
