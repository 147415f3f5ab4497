"""Run HELIOS on this machine: evaluate, select, serve one OpenAI endpoint, adapt (no cluster)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

DEFAULT_STATE_FILE = Path(".helios") / "state.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="HeliosDeployment YAML (or just its spec). Default: the built-in default.yaml."
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address the endpoint listens on. Default: 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8080, help="Port of the OpenAI endpoint. Default: 8080.")
    parser.add_argument(
        "--state-file",
        type=Path,
        default=DEFAULT_STATE_FILE,
        help=f"Where to keep state for resuming (worker logs go next to it). Default: {DEFAULT_STATE_FILE}.",
    )
    parser.add_argument("--no-dashboard", action="store_true", help="Print one line per decision instead.")


def run(args: argparse.Namespace) -> int:
    from helios_contracts.errors import UserError
    from helios_operator.local.config import load_run_spec
    from helios_operator.spec import SpecError

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    try:
        spec = load_run_spec(args.config)
    except SpecError as error:
        raise UserError(str(error)) from error
    return asyncio.run(_main(spec, args))


async def _main(spec, args: argparse.Namespace) -> int:
    from rich.console import Console

    from helios_operator.local.dashboard import Dashboard
    from helios_operator.local.loop import LocalRun, RunOptions
    from helios_operator.local.state import LogEntry

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def print_entry(entry: LogEntry) -> None:
        where = "" if entry.model is None else f" {entry.model}/{entry.layers}"
        print(f"{entry.at:%H:%M:%S} {entry.kind}{where}: {entry.message}", file=sys.stderr, flush=True)

    options = RunOptions(state_file=args.state_file, host=args.host, port=args.port)
    if args.no_dashboard:
        local = LocalRun(spec, options, on_log=print_entry)
        print(f"helios run: endpoint http://{args.host}:{args.port}/v1, state {args.state_file}", file=sys.stderr)
        return await local.run(stop)
    local = LocalRun(spec, options)
    with Dashboard(local.status, Console(stderr=True)):
        return await local.run(stop)
