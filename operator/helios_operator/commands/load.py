"""Send open-loop traffic to an OpenAI endpoint and report sent/ok/failed and p50/p99 latency."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="Endpoint base URL, e.g. http://127.0.0.1:8080.")
    parser.add_argument("--rate", type=float, required=True, help="Mean requests per second (Poisson arrivals).")
    parser.add_argument("--prompts", type=Path, required=True, help="File with one prompt per line.")
    parser.add_argument("--duration", type=float, default=30.0, help="Seconds to send for. Default: 30.")
    parser.add_argument("--max-requests", type=int, default=10_000, help="Send at most this many. Default: 10000.")
    parser.add_argument("--shift-to", type=Path, help="Prompts to send from --shift-at on (a workload shift).")
    parser.add_argument("--shift-at", type=float, help="Seconds after the start at which to shift.")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens per request. Default: 16.")
    parser.add_argument("--timeout", type=float, default=120.0, help="Per-request timeout in seconds. Default: 120.")
    parser.add_argument("--model", default="helios", help="Model name to send. Default: helios.")
    parser.add_argument("--stream", action="store_true", help="Use streaming (SSE) completions.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the arrival times. Default: 0.")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")


def _read_prompts(path: Path, flag: str) -> list[str]:
    from helios_contracts.errors import UserError

    try:
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {flag} {path}: {error}") from error
    if not prompts:
        raise UserError(f"{flag} {path} has no prompts")
    return prompts


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from helios_contracts.errors import UserError
    from helios_operator.local.loadgen import LoadSettings, run_load
    from helios_operator.spec import describe_validation_error

    if (args.shift_to is None) != (args.shift_at is None):
        raise UserError("--shift-to and --shift-at go together")
    try:
        settings = LoadSettings(
            url=args.url,
            rate=args.rate,
            prompts=_read_prompts(args.prompts, "--prompts"),
            duration=args.duration,
            shift_prompts=_read_prompts(args.shift_to, "--shift-to") if args.shift_to else None,
            shift_at=args.shift_at,
            max_requests=args.max_requests,
            max_tokens=args.max_tokens,
            timeout=args.timeout,
            model=args.model,
            stream=args.stream,
            seed=args.seed,
        )
    except ValidationError as error:
        raise UserError(describe_validation_error(error)) from error
    report, _ = asyncio.run(run_load(settings))
    if args.json:
        print(json.dumps(report.model_dump(mode="json"), indent=1))
    else:
        _print_table(report)
    return 0 if report.failed == 0 else 1


def _print_table(report) -> None:
    from rich.console import Console
    from rich.table import Table

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    table = Table(title=f"helios load: {report.url} at {report.rate:g} req/s for {report.duration_seconds:.1f} s")
    for column in ("phase", "sent", "ok", "failed", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right" if column != "phase" else "left")
    table.add_row(
        "all",
        str(report.sent),
        str(report.ok),
        str(report.failed),
        ms(report.p50_latency_seconds),
        ms(report.p99_latency_seconds),
    )
    for name, phase in (("before shift", report.before_shift), ("after shift", report.after_shift)):
        if phase is not None:
            table.add_row(
                name,
                str(phase.sent),
                str(phase.ok),
                str(phase.failed),
                ms(phase.p50_latency_seconds),
                ms(phase.p99_latency_seconds),
            )
    console = Console()
    console.print(table)
    console.print(f"{report.num_tokens} tokens, {report.tokens_per_second:.1f} tokens/s")
    for error, count in report.errors.items():
        console.print(f"[red]{count} x {error}[/red]")
