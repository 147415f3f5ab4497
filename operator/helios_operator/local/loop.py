"""The control loop of ``helios run``: evaluate, select, serve, then scrape -> policy -> act.

The policy is pure (``helios_operator.policy``); this module only gathers its inputs and
carries its decisions out. A decision changes the policy's state only once it has been
carried out, so a failed layer change or hand-over leaves HELIOS describing what actually
serves. Everything that must survive a kill goes to the state file as it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from helios_contracts.reports import EvaluationReport
from helios_operator.local.calibrate import CalibrationFailed, CalibrationJob, exits_dirs
from helios_operator.local.calibrate import calibrate as calibrate_exits
from helios_operator.local.config import candidate_ref, spec_hash
from helios_operator.local.evaluate import (
    EvaluationFailed,
    EvaluationJob,
    evaluate_all,
    evaluation_prompts,
    write_prompts,
)
from helios_operator.local.proxy import Proxy, ProxyServer
from helios_operator.local.serving import LayerChangeFailed, Serving
from helios_operator.local.shadow import ShadowCheck
from helios_operator.local.snapshot import MAX_SERIES_POINTS, Evaluated, RunStatus, SeriesPoint
from helios_operator.local.state import (
    LogEntry,
    LogKind,
    Phase,
    Resume,
    RunState,
    StateFileError,
    WorkerRecord,
    load_state,
    plan_start,
    save_state,
)
from helios_operator.local.supervisor import CommandBuilder, Supervisor, WorkerFailed, WorkerSettings, reap_orphans
from helios_operator.local.telemetry import MetricsError, WorkerCounters, read_counters, telemetry_between
from helios_operator.policy import (
    AdaptState,
    Decision,
    Telemetry,
    adapt,
    apply,
    initial_state,
    record,
    reselect,
    with_reports,
)
from helios_operator.policy import select as select_model
from helios_operator.spec import HeliosDeploymentSpec

RECENT_PROMPTS_PATH = "/v1/helios/recent-prompts"
SHOWN_LOG_ENTRIES = 30
MAX_START_ROUNDS = 3  # rounds of Supervisor.attempts before the run gives up on a worker


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RunOptions:
    state_file: Path
    host: str = "127.0.0.1"
    port: int = 8080
    served_name: str = "helios"
    evaluation_timeout: float = 900.0
    ready_timeout: float = 180.0
    drain_timeout: float = 30.0
    attempts: int = 3
    backoff: float = 1.0
    worker_command: CommandBuilder | None = None  # default: ``helios serve``

    @property
    def log_dir(self) -> Path:
        return self.state_file.parent / "logs"


class RunFailed(RuntimeError):
    """helios run cannot go on; the message says why (it is also in the state file's log)."""


@dataclass
class _Counts:
    switches: int = 0
    layer_changes: int = 0
    restarts: int = 0
    series: list[SeriesPoint] = field(default_factory=list)


class LocalRun:
    def __init__(
        self,
        spec: HeliosDeploymentSpec,
        options: RunOptions,
        on_log: Callable[[LogEntry], None] | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.spec = spec
        self.options = options
        self.clock = clock
        self.on_log = on_log
        self.state = RunState(spec_hash=spec_hash(spec), run_pid=os.getpid())
        self.message = "starting"
        self.counts = _Counts()
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(600.0, connect=5.0), limits=httpx.Limits(max_connections=512)
        )
        self.proxy = Proxy(self.client, served_name=options.served_name, status=self._status_json)
        supervisor = Supervisor(
            log_dir=options.log_dir,
            client=self.client,
            ready_timeout=options.ready_timeout,
            drain_timeout=options.drain_timeout,
            attempts=options.attempts,
            backoff=options.backoff,
            on_failure=lambda message: self._log("error", message),
            command=options.worker_command,
        )
        self.serving = Serving(self.proxy, supervisor, self.client, options.drain_timeout, self._log_handover)
        self.shadow = (
            ShadowCheck(supervisor, self.client, lambda message: self._log("error", message))
            if spec.monitoring.shadow.fraction > 0
            else None
        )
        self.adapt_state: AdaptState | None = None
        self._last_counters: WorkerCounters | None = None
        self._scrape_problem: str | None = None

    # --- bookkeeping ---------------------------------------------------------------------
    def _log(self, kind: LogKind, message: str, decision: Decision | None = None) -> None:
        now = self.clock()
        entry = (
            LogEntry.from_decision(decision, now)
            if decision is not None
            else LogEntry(at=now, kind=kind, message=message)
        )
        if decision is None and self.serving.worker is not None:
            entry = entry.model_copy(
                update={"model": self.serving.worker.settings.model, "layers": self.serving.worker.settings.layers}
            )
        self.state = self.state.with_log(entry)
        if self.on_log is not None:
            self.on_log(entry)
        self._save()

    def _log_handover(self, message: str) -> None:
        self._log("handover" if message.startswith("handed over") else "worker_started", message)

    def _save(self) -> None:
        worker = self.serving.worker
        workers = (
            [WorkerRecord(pid=worker.pid, url=worker.url, model=worker.settings.model, layers=worker.settings.layers)]
            if worker is not None
            else []
        )
        scorer = self.shadow.scorer if self.shadow is not None else None
        if scorer is not None:  # so that a restarted run can end it too
            workers.append(
                WorkerRecord(pid=scorer.pid, url=scorer.url, model=scorer.settings.model, layers=scorer.settings.layers)
            )
        self.state = self.state.model_copy(update={"workers": workers, "updated_at": self.clock()})
        save_state(self.options.state_file, self.state)

    def _set_phase(self, phase: Phase, message: str = "") -> None:
        self.state = self.state.model_copy(update={"phase": phase})
        self.message = message
        self._save()

    def status(self) -> RunStatus:
        worker = self.serving.worker
        decision = self.state.decision
        report = {r.model: r for r in self.state.reports}.get(decision.model) if decision else None
        return RunStatus(
            phase=self.state.phase,
            message=self.message,
            spec_hash=self.state.spec_hash,
            proxy_url=self.state.proxy_url,
            state_file=str(self.options.state_file),
            model=worker.settings.model if worker else (decision.model if decision else None),
            layers=worker.settings.layers if worker else (decision.layers if decision else None),
            layers_total=report.num_layers_total if report else None,
            evaluated=Evaluated.from_decision(decision, self.spec.accuracy.min_agreement),
            worker_pid=worker.pid if worker else None,
            worker_url=worker.url if worker else None,
            num_forwarded=self.proxy.num_forwarded,
            num_failed=self.proxy.num_failed,
            num_switches=self.counts.switches,
            num_layer_changes=self.counts.layer_changes,
            num_worker_restarts=self.counts.restarts,
            log=self.state.log[-SHOWN_LOG_ENTRIES:],
            series=self.counts.series,
        )

    def _status_json(self) -> dict:
        return self.status().model_dump(mode="json")

    # --- evaluation ----------------------------------------------------------------------
    async def _recent_prompts(self) -> list[str]:
        """Prompts the serving worker recorded; none if it has none or cannot say."""
        if self.serving.worker is None:
            return []
        try:
            response = await self.client.get(self.serving.worker.url + RECENT_PROMPTS_PATH, timeout=10.0)
            response.raise_for_status()
            return [p for p in response.json()["prompts"] if isinstance(p, str)]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return []

    @property
    def _exits_dir(self) -> Path:
        return self.options.state_file.parent / "exits"

    async def calibrate(self) -> None:
        """Calibrate the exits of each candidate with ``calibrate`` (once per settings: see local/calibrate.py)."""
        for candidate in self.spec.candidates:
            if candidate.calibrate is None:
                continue
            job = CalibrationJob.of(candidate, self._exits_dir)
            if job.is_done:
                continue
            self.message = f"calibrating {candidate.name} on {job.texts}"
            self._log("evaluate", f"calibrating the exits of {candidate.name} on {job.texts} ({job.tokens} tokens)")
            try:
                out = await calibrate_exits(job, self.options.evaluation_timeout)
            except CalibrationFailed as error:
                self._log("error", f"calibration failed: {error}")
                raise RunFailed(f"calibration failed: {error}") from error
            self._log("evaluate", f"calibrated the exits of {candidate.name}: {out}")

    async def evaluate(self, from_traffic: bool) -> list[EvaluationReport]:
        await self.calibrate()
        exits = exits_dirs(self.spec, self._exits_dir)
        recent = await self._recent_prompts() if from_traffic else []
        prompts = evaluation_prompts(self.spec, recent)
        prompts_file = write_prompts(self.options.log_dir / "evaluation-prompts.txt", prompts)
        jobs = [
            EvaluationJob(
                name=candidate.name,
                model_ref=candidate_ref(self.spec, candidate.name),
                prompts_file=prompts_file,
                max_new_tokens=self.spec.evaluation.max_new_tokens,
                exit_threshold=self.spec.exit.threshold,
                time_budget=self.spec.evaluation.time_budget,
                exits=exits.get(candidate.name),
            )
            for candidate in self.spec.candidates
        ]
        self._log("evaluate", f"evaluating {len(jobs)} candidates on {prompts_file.name} (full depth)")

        def progress(message: str) -> None:
            self.message = message

        try:
            reports = await evaluate_all(
                jobs,
                timeout=self.options.evaluation_timeout,
                attempts=self.options.attempts,
                backoff=self.options.backoff,
                progress=progress,
                on_failure=lambda message: self._log("error", message),
            )
        except EvaluationFailed as error:
            self._log("error", f"evaluation failed: {error}")
            raise RunFailed(f"evaluation failed: {error}") from error
        summary = "; ".join(
            f"{r.model}: {r.num_tokens} tokens{' (time budget ran out)' if r.is_cut_by_time_budget else ''}, "
            f"{r.tokens_per_second:.1f} tok/s, mean exit {r.mean_exit_layer_by_layer[-1]:.2f} of {r.num_layers_total}"
            for r in reports
        )
        self._log("evaluate", f"evaluated: {summary}")
        return reports

    # --- serving -------------------------------------------------------------------------
    def _settings(self, decision: Decision) -> WorkerSettings:
        histograms = {report.model: report.exit_layer_histogram for report in self.state.reports}
        return WorkerSettings(
            model=decision.model,
            model_ref=candidate_ref(self.spec, decision.model),
            layers=decision.layers,
            exit_threshold=self.spec.exit.threshold,
            record_prompts=max(32, self.spec.evaluation.prompts_per_candidate),
            shadow_fraction=self.spec.monitoring.shadow.fraction,
            exit_histogram=tuple(histograms.get(decision.model, ())),
            exit_gate=self.spec.exit.gate,
            memory_budget=self.spec.memory_budget,
            context_tokens=self.spec.context_tokens,
            exits=exits_dirs(self.spec, self._exits_dir).get(decision.model),
        )

    def _scorer_settings(self, model: str) -> WorkerSettings:
        """The shadow scorer: the served model with every layer, keeping no prompts or samples."""
        total = {report.model: report.num_layers_total for report in self.state.reports}[model]
        return WorkerSettings(
            model=model,
            model_ref=candidate_ref(self.spec, model),
            layers=total,
            exit_threshold=self.spec.exit.threshold,
            record_prompts=0,
        )

    async def _start_worker(self, decision: Decision) -> None:
        """Start (or restart) the serving worker; RunFailed after MAX_START_ROUNDS rounds of retries."""
        for round_number in range(1, MAX_START_ROUNDS + 1):
            self.message = f"starting worker {decision.model} with {decision.layers} layers"
            try:
                await self.serving.start(self._settings(decision))
                self._last_counters = WorkerCounters.zero(decision.layers)
                return
            except WorkerFailed as error:
                self._set_phase("Degraded", str(error))
                if round_number == MAX_START_ROUNDS:
                    self._log("error", f"giving up on worker {decision.model}: {error}")
                    raise RunFailed(str(error)) from error
                await asyncio.sleep(self.options.backoff * 4**round_number)

    def _adopt(self, decision: Decision) -> None:
        self.state = self.state.model_copy(update={"decision": decision})

    async def carry_out(self, decision: Decision) -> bool:
        """Make the worker match ``decision``; False (and logged) if that failed."""
        worker = self.serving.worker
        try:
            if worker is not None and decision.model == worker.settings.model:
                if decision.layers != worker.settings.layers:
                    await self.serving.set_layers(decision.layers)
                    self.counts.layer_changes += 1
            else:
                await self.serving.hand_over(self._settings(decision))
                self._last_counters = WorkerCounters.zero(decision.layers)
                self.counts.switches += 1
        except (LayerChangeFailed, WorkerFailed) as error:
            self._log(
                "error", f"could not carry out {decision.kind} ({decision.model}, {decision.layers} layers): {error}"
            )
            return False
        self._adopt(decision)
        self._save()
        return True

    # --- monitoring ----------------------------------------------------------------------
    async def scrape(self) -> Telemetry | None:
        worker = self.serving.worker
        if worker is None:
            return None
        now = self.clock()
        try:
            response = await self.client.get(f"{worker.url}/metrics", timeout=5.0)
            response.raise_for_status()
            counters = read_counters(response.text)
        except (httpx.HTTPError, MetricsError) as error:
            problem = f"cannot read {worker.url}/metrics: {error}"
            if problem != self._scrape_problem:  # once per distinct problem, not every interval
                self._log("error", problem)
            self._scrape_problem = problem
            return None
        self._scrape_problem = None
        previous = self._last_counters or WorkerCounters.zero(counters.layers)
        self._last_counters = counters
        return telemetry_between(previous, counters, worker.settings.model, now)

    def _add_point(self, telemetry: Telemetry, state: AdaptState) -> None:
        point = SeriesPoint(
            at=telemetry.observed_at,
            model=telemetry.model,
            layers=telemetry.layers,
            num_new_tokens=telemetry.num_new_tokens,
            num_new_breaches=telemetry.num_new_breaches,
            tokens_per_second=telemetry.num_new_tokens / self.spec.monitoring.interval,
            window_breach_rate=state.breaches.breach_rate,
        )
        self.counts.series = [*self.counts.series, point][-MAX_SERIES_POINTS:]

    async def _recover_crashed_worker(self) -> None:
        worker, decision = self.serving.worker, self.state.decision
        if worker is None or decision is None:
            return
        self._log(
            "worker_crashed",
            f"worker {worker.settings.model} (pid {worker.pid}) exited with status {worker.returncode}; "
            f"restarting it. Log tail: {worker.log_tail()[-300:]}",
        )
        self.serving.detach()
        self.counts.restarts += 1
        await self._start_worker(decision.model_copy(update={"layers": worker.settings.layers}))
        self._set_phase("Serving")

    async def tick(self) -> None:
        """One monitoring round: scrape, decide, act."""
        worker = self.serving.worker
        if worker is not None and not worker.is_running:
            await self._recover_crashed_worker()
            return
        if self.adapt_state is None:
            raise RuntimeError("tick() before the first selection was served")
        if self.shadow is not None and worker is not None:
            await self.shadow.step(worker, self._scorer_settings(worker.settings.model))
        telemetry = await self.scrape()
        now = self.clock()
        state = self.adapt_state
        if telemetry is not None:
            state = record(state, telemetry)
            self._add_point(telemetry, state)
        decision = adapt(state, telemetry, self.spec, now)
        self.adapt_state = state
        if decision is None:
            return
        if decision.kind == "hold":
            last = self.state.log[-1] if self.state.log else None
            if last is None or last.kind != "hold" or last.message != decision.reason:
                self._log("hold", decision.reason, decision)
            return
        self._log(decision.kind, decision.reason, decision)
        if decision.kind == "reassess":
            await self.reassess(decision, now)
            return
        self._set_phase("Adapting", decision.reason)
        if await self.carry_out(decision):
            self.adapt_state = apply(self.adapt_state, decision, self.clock())
        self._set_phase("Serving")

    async def reassess(self, request: Decision, now: datetime) -> None:
        """Re-evaluate every candidate on recent traffic, then switch, resize or keep (step 6)."""
        if self.adapt_state is None:
            raise RuntimeError("reassess() before the first selection was served")
        self._set_phase("Adapting", "reassessing the candidates on recent traffic")
        self.adapt_state = apply(self.adapt_state, request, now)
        try:
            reports = await self.evaluate(from_traffic=True)
        except RunFailed:
            self._set_phase("Serving", "reassessment failed; keeping the current setting")
            return
        self.state = self.state.model_copy(update={"reports": reports})
        self.adapt_state = with_reports(self.adapt_state, reports)
        decision = reselect(self.adapt_state, reports, self.spec, self.clock())
        self._log(decision.kind, decision.reason, decision)
        if decision.kind != "hold" and await self.carry_out(decision):
            self.adapt_state = apply(self.adapt_state, decision, self.clock())
        self._set_phase("Serving")

    # --- the whole run -------------------------------------------------------------------
    def _load_saved(self) -> RunState | None:
        try:
            return load_state(self.options.state_file)
        except StateFileError as error:
            self._log("error", f"{error}; starting afresh")
            return None

    async def _choose(self, saved: RunState | None) -> tuple[list[EvaluationReport], Decision]:
        if saved is not None:
            killed = reap_orphans(saved.workers)
            if killed:
                self._log("error", f"stopped workers left by a previous run: pids {killed}")
        plan = plan_start(saved, self.state.spec_hash)
        if isinstance(plan, Resume):
            previous_log = saved.log if saved is not None else []
            self.state = self.state.model_copy(update={"log": previous_log, "reports": plan.reports})
            self._log(
                "resume",
                f"resuming {plan.decision.model} with {plan.decision.layers} layers from {self.options.state_file} "
                "(spec unchanged; not re-evaluating)",
            )
            return plan.reports, plan.decision
        self._set_phase("Evaluating", f"evaluating: {plan.reason}")
        reports = await self.evaluate(from_traffic=False)
        self.state = self.state.model_copy(update={"reports": reports})
        try:
            decision = select_model(reports, self.spec, self.spec.memory_budget, self.clock())
        except ValueError as error:
            self._log("error", f"no model can be selected: {error}")
            raise RunFailed(str(error)) from error
        self._log("select", decision.reason, decision)
        return reports, decision

    async def run(self, stop: asyncio.Event, server: ProxyServer | None = None) -> int:
        saved = self._load_saved()  # before anything is saved over it
        server = server or ProxyServer(self.proxy, self.options.host, self.options.port)
        await server.start()
        self.state = self.state.model_copy(update={"proxy_url": server.url})
        self._save()
        try:
            return await _until(stop, self._serve(saved))
        except RunFailed as error:
            self._set_phase("Failed", str(error))
            print(f"helios run: {error}", file=sys.stderr)
            return 1
        finally:
            self.message = "stopping: draining the worker"
            await self.serving.stop()
            if self.shadow is not None:
                await self.shadow.stop()
            if self.state.phase != "Failed":
                self._set_phase("Stopped", "stopped")
            else:
                self._save()
            await server.stop()
            await self.client.aclose()

    async def _serve(self, saved: RunState | None) -> int:
        reports, decision = await self._choose(saved)
        self._adopt(decision)
        await self._start_worker(decision)
        self.adapt_state = initial_state(decision, reports, self.spec, self.spec.memory_budget, self.clock())
        self._set_phase("Serving", "")
        while True:
            await asyncio.sleep(self.spec.monitoring.interval)
            await self.tick()


async def _until(stop: asyncio.Event, work: object) -> int:
    """Run ``work`` until it ends or ``stop`` is set (then it is cancelled); 0 on a requested stop."""
    task = asyncio.ensure_future(work)  # type: ignore[arg-type]
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopper.cancel()
        return int(task.result())
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0
