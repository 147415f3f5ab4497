"""End-to-end benchmark: HELIOS (`helios run`) vs static serving, on one shifting workload.

Systems, each fed the same open-loop workload (Poisson arrivals, seeded; in-domain prompts,
then out-of-domain prompts from --shift-at on) through real worker processes:
  <model>/full     `helios serve` at full depth, no exit tests (the reference output)
  <model>/ee-all   all layers loaded, early exit (the paper's EE-LLM baseline)
  helios           `helios run`: evaluate, select model and L, adapt while serving

Per system: completion tokens/s over the workload, p50/p99 request latency, failed requests,
and the share of requests whose completion text equals the full-depth completion of the
model that served it (greedy decoding, same prompt; a reference-free agreement measure at
request level, stricter than per-token agreement since one early token changes the rest).
For helios also model switches and layer changes, and a plot of loaded layers and breach
rate over time (--plot). Startup (evaluation, loading) is reported apart, not in tokens/s.

    python bench/e2e_bench.py --rate 1 --duration 40 --shift-at 20 --max-tokens 8 \\
        --plot bench/e2e_layers.png --record bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from helios_operator.local.config import candidate_ref, load_run_spec, packaged_prompts_path
from helios_operator.local.loadgen import LoadReport, LoadSettings, RequestResult, run_load
from helios_operator.local.proxy import STATUS_PATH
from helios_operator.local.snapshot import RunStatus
from helios_operator.local.supervisor import Supervisor, WorkerSettings, free_port

READY_TIMEOUT = 600.0


@dataclass
class Outcome:
    name: str
    report: LoadReport
    results: list[RequestResult]
    startup_seconds: float
    status: RunStatus | None = None
    load_started: datetime | None = None
    load_average: float | None = None
    agreement: float | None = None
    notes: list[str] = field(default_factory=list)


def _prompts(name: str) -> list[str]:
    return [line for line in packaged_prompts_path(name).read_text().splitlines() if line.strip()]


def _workload(args: argparse.Namespace, url: str, model: str = "helios") -> LoadSettings:
    """The same requests for every system; ``model`` is the name the endpoint answers to."""
    return LoadSettings(
        url=url,
        model=model,
        rate=args.rate,
        prompts=_prompts("in_domain.txt"),
        shift_prompts=_prompts("out_of_domain.txt"),
        shift_at=args.shift_at,
        duration=args.duration,
        max_tokens=args.max_tokens,
        timeout=args.request_timeout,
        seed=args.seed,
    )


async def run_static(args: argparse.Namespace, name: str, ref: str, early_exit: bool, log_dir: Path) -> Outcome:
    """One `helios serve` with all layers loaded, early exit on or off."""
    flag = "--early-exit" if early_exit else "--no-early-exit"

    def command(settings: WorkerSettings, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "helios_operator.cli",
            "serve",
            "--model",
            ref,
            "--served-model-name",
            name,
            "--exit-threshold",
            str(args.exit_threshold),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            flag,
        ]

    async with httpx.AsyncClient() as client:
        supervisor = Supervisor(log_dir=log_dir, client=client, ready_timeout=READY_TIMEOUT, command=command)
        began = time.monotonic()
        worker = await supervisor.start(WorkerSettings(model=name, model_ref=ref, layers=1, exit_threshold=0.8))
        startup = time.monotonic() - began
        try:
            report, results = await run_load(_workload(args, worker.url, model=name))
        finally:
            await supervisor.stop(worker)
    label = f"{name}/{'ee-all' if early_exit else 'full'}"
    return Outcome(label, report, results, startup, load_average=_load_average())


async def run_helios(args: argparse.Namespace, work_dir: Path) -> Outcome:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "helios_operator.cli", "run", "--port", str(port), "--no-dashboard"]
    command += ["--state-file", str(work_dir / "helios-state" / "state.json")]
    if args.config:
        command += ["--config", str(args.config)]
    log = (work_dir / "helios-run.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    began = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"helios run exited with {process.returncode}; see {log.name}")
                if time.monotonic() - began > READY_TIMEOUT:
                    raise RuntimeError(f"helios run not ready after {READY_TIMEOUT:g} s; see {log.name}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/ready")).status_code == 200:
                        break
                await asyncio.sleep(0.5)
            startup = time.monotonic() - began
            load_started = datetime.now(UTC)
            report, results = await run_load(_workload(args, url))
            status = RunStatus.model_validate((await client.get(url + STATUS_PATH)).json())
        process.send_signal(signal.SIGTERM)
        process.wait(120)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    return Outcome(
        "helios", report, results, startup, status=status, load_started=load_started, load_average=_load_average()
    )


def agreement(outcome: Outcome, references: dict[str, list[RequestResult]]) -> float | None:
    """Share of requests whose text equals the serving model's full-depth text for the same request."""
    matches = total = 0
    for index, result in enumerate(outcome.results):
        reference = references.get(result.served_by or "")
        if not result.is_ok or reference is None or index >= len(reference) or not reference[index].is_ok:
            continue
        if reference[index].prompt != result.prompt:
            continue  # the same seed sends the same prompts in order; anything else is not comparable
        total += 1
        matches += result.text == reference[index].text
    return matches / total if total else None


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def table(outcomes: list[Outcome], baseline: Outcome) -> str:
    base_tps = baseline.report.tokens_per_second or float("nan")
    base_p50 = baseline.report.p50_latency_seconds or float("nan")
    base_p99 = baseline.report.p99_latency_seconds or float("nan")
    lines = [
        "| system | tokens/s | x tok/s | p50 ms | p99 ms | x p50 | x p99 | ok/sent | same text as full depth "
        "| switches | layer changes | startup s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        report = outcome.report
        p50, p99 = report.p50_latency_seconds, report.p99_latency_seconds
        status = outcome.status
        lines.append(
            f"| {outcome.name} | {report.tokens_per_second:.2f} | {report.tokens_per_second / base_tps:.2f} "
            f"| {_ms(p50)} | {_ms(p99)} | {(base_p50 / p50) if p50 else float('nan'):.2f} "
            f"| {(base_p99 / p99) if p99 else float('nan'):.2f} | {report.ok}/{report.sent} "
            f"| {'-' if outcome.agreement is None else f'{outcome.agreement:.2f}'} "
            f"| {status.num_switches if status else '-'} | {status.num_layer_changes if status else '-'} "
            f"| {outcome.startup_seconds:.0f} "
            f"| {'-' if outcome.load_average is None else f'{outcome.load_average:.1f}'} |"
        )
    return "\n".join(lines)


def plot(status: RunStatus, shift_at: float, load_started: datetime, load_seconds: float, path: Path) -> None:
    """Loaded layers and the breach rate over the workload.

    Layers come from the worker scrapes; without any (no telemetry) from the decisions in the
    log, and the breach rate is then left out rather than drawn as zero.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def offset(at: datetime) -> float:
        return (at - load_started).total_seconds()

    points = [p for p in status.series if offset(p.at) >= 0]
    figure, layers_axis = plt.subplots(figsize=(8, 3.5))
    if points:
        times, layers = [offset(p.at) for p in points], [p.layers for p in points]
    else:
        changes = [e for e in status.log if e.kind in ("select", "add_layers", "drop_layers", "switch_model")]
        times = [max(0.0, offset(e.at)) for e in changes] + [load_seconds]
        layers = [e.layers or 0 for e in changes] + [changes[-1].layers or 0 if changes else 0]
    layers_axis.step(times, layers, where="post", color="tab:blue")
    layers_axis.set_xlabel("seconds into the workload")
    layers_axis.set_ylabel("layers loaded", color="tab:blue")
    layers_axis.set_xlim(0, load_seconds)
    layers_axis.set_ylim(0, max(layers, default=1) + 1)
    if points:
        breach_axis = layers_axis.twinx()
        breach_axis.plot(times, [p.window_breach_rate for p in points], color="tab:red")
        breach_axis.set_ylabel("breach rate in window", color="tab:red")
        breach_axis.set_ylim(0, 1.05)
    else:
        layers_axis.text(
            0.5,
            0.1,
            "no worker telemetry: breach rate unknown",
            transform=layers_axis.transAxes,
            ha="center",
            color="tab:red",
        )
    layers_axis.axvline(shift_at, color="grey", linestyle="--")
    layers_axis.text(shift_at, 0.5, " prompt shift", color="grey")
    models = sorted({p.model for p in points} or {e.model for e in status.log if e.model})
    layers_axis.set_title(f"HELIOS on a shifting workload (served: {', '.join(models)})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _load_average() -> float | None:
    """1-minute load average (the CPU is shared: a busy neighbour shows up here)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine() -> str:
    cpus = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.processor() or platform.machine()}, {cpus} CPUs (load avg {load:.1f} at the end), no GPU"


async def main(args: argparse.Namespace) -> int:
    spec = load_run_spec(args.config)
    candidates = [(c.name, candidate_ref(spec, c.name)) for c in spec.candidates]
    args.exit_threshold = spec.exit.threshold
    work_dir = Path(tempfile.mkdtemp(prefix="helios-e2e-bench-"))
    outcomes: list[Outcome] = []
    references: dict[str, list[RequestResult]] = {}
    for name, ref in candidates:
        for early_exit in (False, True):
            print(f"running {name} {'early exit, all layers' if early_exit else 'full depth'} ...", file=sys.stderr)
            outcome = await run_static(args, name, ref, early_exit, work_dir / "logs")
            if outcome.report.errors:
                print(f"  {outcome.name} failures: {outcome.report.errors}", file=sys.stderr)
            outcomes.append(outcome)
            if not early_exit:
                references[name] = outcome.results
    print("running helios run ...", file=sys.stderr)
    helios = await run_helios(args, work_dir)
    outcomes.append(helios)
    for outcome in outcomes:
        outcome.agreement = agreement(outcome, references)

    # The paper's baseline: the model HELIOS selected, all layers loaded, early exit.
    selected = next((e for e in reversed(helios.status.log) if e.kind == "select"), None) if helios.status else None
    baseline_name = f"{selected.model if selected else candidates[0][0]}/ee-all"
    baseline = next(o for o in outcomes if o.name == baseline_name)
    result = table(outcomes, baseline)
    decisions = [
        f"- {e.at:%H:%M:%S} {e.kind} {e.model or ''}/{e.layers or ''}: {e.message}"
        for e in (helios.status.log if helios.status else [])
        if e.kind not in ("hold",)
    ]
    if args.plot and helios.status is not None and helios.load_started is not None:
        plot(helios.status, args.shift_at, helios.load_started, helios.report.duration_seconds, args.plot)
    notes = [
        "`same text as full depth`: share of requests whose greedy completion equals the full-depth completion "
        "of the model that served it, for the same prompt (request level: one differing token changes the rest).",
    ]
    if helios.status is not None and not helios.status.series:
        notes.append(
            "HELIOS got no telemetry from its worker in this run (see the error entries below), so it served its "
            "first selection without adapting: no breach-driven layer changes or switches could happen."
        )
    command = "python bench/e2e_bench.py " + shlex.join(sys.argv[1:])
    section = "\n".join(
        [
            "## End-to-end benchmark",
            "",
            f"Machine: {machine()}. Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            f"Command: `{command}`",
            f"Workload: open loop, {args.rate:g} req/s Poisson for {args.duration:g} s, {args.max_tokens} tokens "
            f"per request, in-domain prompts then out-of-domain from {args.shift_at:g} s (seed {args.seed}). "
            f"Ratios (x) are against `{baseline_name}` (higher is better; latency ratio = baseline / system).",
            "",
            result,
            "",
            *(f"- {note}" for note in notes),
            "",
            "HELIOS decisions and events:",
            "",
            *decisions,
            "",
        ]
    )
    print(section)
    if args.record:
        with args.record.open("a", encoding="utf-8") as handle:
            handle.write("\n" + section)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="helios run config (default: the built-in default.yaml)")
    parser.add_argument("--rate", type=float, default=1.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of traffic per system")
    parser.add_argument("--shift-at", type=float, default=20.0, help="seconds until the prompt mix shifts")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, help="write the layers/breach-rate plot here (PNG)")
    parser.add_argument("--record", type=Path, help="append the results section to this markdown file")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
