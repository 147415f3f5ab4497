"""Show what helios run is doing: the live status from its endpoint, else the saved state file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from helios_operator.commands.run import DEFAULT_STATE_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-file", type=Path, default=DEFAULT_STATE_FILE, help="The run's state file.")
    parser.add_argument("--url", help="The run's endpoint, e.g. http://127.0.0.1:8080. Default: from the state file.")
    parser.add_argument("--json", action="store_true", help="Print the status as JSON.")


def run(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console

    from helios_contracts.errors import UserError
    from helios_operator.local.dashboard import render
    from helios_operator.local.proxy import STATUS_PATH
    from helios_operator.local.snapshot import Evaluated, RunStatus
    from helios_operator.local.state import StateFileError, load_state

    try:
        saved = load_state(args.state_file)
    except StateFileError as error:
        raise UserError(str(error)) from error
    url = args.url or (saved.proxy_url if saved is not None else None)
    status: RunStatus | None = None
    source = ""
    if url:
        try:
            response = httpx.get(url.rstrip("/") + STATUS_PATH, timeout=5.0)
            response.raise_for_status()
            status = RunStatus.model_validate(response.json())
            source = f"live from {url}"
        except (httpx.HTTPError, ValueError):
            status = None  # not running (any more): the state file says what it last did
    if status is None:
        if saved is None:
            raise UserError(f"no helios run answers at {url} and there is no state file {args.state_file}")
        decision = saved.decision
        status = RunStatus(
            phase=saved.phase if saved.phase in ("Stopped", "Failed") else "Stopped",
            message="not running" if saved.phase not in ("Stopped", "Failed") else "",
            spec_hash=saved.spec_hash,
            proxy_url=saved.proxy_url,
            state_file=str(args.state_file),
            model=decision.model if decision else None,
            layers=decision.layers if decision else None,
            layers_total=decision.layers_total if decision else None,
            evaluated=Evaluated.from_decision(decision),
            log=saved.log,
        )
        source = f"from {args.state_file} (not running)"
    if args.json:
        print(json.dumps({"source": source, **status.model_dump(mode="json")}, indent=1))
    else:
        console = Console()
        console.print(render(status))
        console.print(f"[dim]{source}[/dim]")
    return 0
