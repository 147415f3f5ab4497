"""Evaluate candidate models at full depth on prompts: exit distribution, agreement, speed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

    from helios_contracts.reports import EvaluationReport

RECENT_PROMPTS_PATH = "/v1/helios/recent-prompts"
FETCH_TIMEOUT_SECONDS = 10.0
# Table columns: greedy agreement at these fractions of each candidate's depth.
AGREEMENT_DEPTHS = (0.25, 0.5, 0.75)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--candidates", required=True, help="REF[,REF...] or NAME=REF[,...]: aliases, local HF dirs, cached hub ids"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", type=Path, help="file with one prompt per line")
    source.add_argument("--from", dest="from_url", metavar="URL", help="a serving worker: use its recent prompts")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="generation time per candidate; when it runs out the report has the tokens made by then",
    )
    parser.add_argument("--exit-threshold", type=float, default=0.8, help="a token exits when max softmax >= T")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument(
        "--exits", action="append", default=[], metavar="[NAME=]DIR", help="calibrated exits for a candidate"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of evaluation reports on stdout")


def _exits_by_candidate(values: list[str], names: list[str]) -> dict[str, str]:
    """``--exits DIR`` (one candidate) or ``--exits NAME=DIR`` (any) -> {candidate: DIR}."""
    from helios_contracts.errors import UserError

    exits: dict[str, str] = {}
    for value in values:
        name, separator, directory = value.partition("=")
        if not separator:
            if len(names) != 1:
                raise UserError("--exits: with several candidates give NAME=DIR")
            name, directory = names[0], value
        if name not in names:
            raise UserError(f"--exits: no candidate named {name!r}")
        exits[name] = directory
    return exits


def read_prompts_file(path: Path) -> list[str]:
    from helios_contracts.errors import UserError

    try:
        prompts = [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read --prompts: {error}") from None
    if not prompts:
        raise UserError(f"--prompts file {path} has no prompts")
    return prompts


def fetch_recent_prompts(url: str) -> list[str]:
    """``GET {url}/v1/helios/recent-prompts`` -> its ``prompts`` list (strings)."""
    import httpx

    from helios_contracts.errors import UserError

    endpoint = url.rstrip("/") + RECENT_PROMPTS_PATH
    try:
        response = httpx.get(endpoint, timeout=FETCH_TIMEOUT_SECONDS)
        response.raise_for_status()
        prompts = response.json()["prompts"]
    except httpx.HTTPStatusError as error:
        raise UserError(f"{endpoint} answered HTTP {error.response.status_code}") from None
    except httpx.HTTPError as error:
        raise UserError(f"cannot reach {endpoint}: {error}") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f'{endpoint} did not return JSON {{"prompts": [...]}}') from None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise UserError(f"{endpoint}: prompts must be a list of strings")
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise UserError(f"{endpoint} has no recent prompts yet")
    return prompts


def _check_settings(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Validate everything cheap before loading any model, so a typo costs no evaluation time."""
    from helios_contracts.errors import UserError
    from helios_worker.evaluation import parse_candidates
    from helios_worker.model_refs import ModelRefError, resolve

    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be >= 1")
    if args.time_budget is not None and not args.time_budget > 0:
        raise UserError("--time-budget must be > 0 seconds")
    if not 0.0 < args.exit_threshold <= 1.0:
        raise UserError("--exit-threshold must be in (0, 1]")
    try:
        candidates = parse_candidates(args.candidates)
        for _, ref in candidates:
            resolve(ref)
    except (ModelRefError, ValueError) as error:
        raise UserError(str(error)) from None
    return candidates


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from helios_contracts.errors import UserError
    from helios_worker.evaluation import EvaluationError, evaluate_candidates, planned_tokens
    from helios_worker.gpu import GpuTelemetry
    from helios_worker.loading import ModelLoadError
    from helios_worker.model_refs import ModelRefError

    candidates = _check_settings(args)
    prompts = read_prompts_file(args.prompts) if args.prompts else fetch_recent_prompts(args.from_url)
    telemetry = GpuTelemetry.open()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            total = planned_tokens(len(prompts), args.max_new_tokens)
            tasks = {name: bar.add_task(f"{name} (tokens)", total=total) for name, _ in candidates}
            reports = evaluate_candidates(
                candidates,
                prompts,
                max_new_tokens=args.max_new_tokens,
                exit_threshold=args.exit_threshold,
                device=args.device,
                progress=lambda name, tokens: bar.advance(tasks[name], tokens),
                telemetry=telemetry,
                exits=_exits_by_candidate(args.exits, [name for name, _ in candidates]),
                time_budget=args.time_budget,
            )
    except (ModelRefError, ModelLoadError, EvaluationError, ValueError) as error:
        raise UserError(str(error)) from None
    finally:
        telemetry.close()

    if args.json:
        print(json.dumps([report.model_dump(mode="json") for report in reports]))
    else:
        console = Console()
        if not console.is_terminal:
            console.width = 160  # piped or captured: rich's default 80 columns would wrap every cell
        console.print(report_table(reports))
    return 0


def report_table(reports: list[EvaluationReport]) -> Table:
    from rich.table import Table

    table = Table(title="HELIOS candidate evaluation (full depth)")
    table.add_column("model")
    table.add_column("layers", justify="right")
    table.add_column("tokens", justify="right")
    for depth in AGREEMENT_DEPTHS:
        table.add_column(f"agree @{depth:.0%}", justify="right")
    table.add_column("mean exit", justify="right")
    table.add_column("tok/s", justify="right")
    table.add_column("TPOT ms", justify="right")
    table.add_column("peak mem", justify="right")
    for report in reports:
        n = report.num_layers_total
        agreement = []
        for depth in AGREEMENT_DEPTHS:
            layers = max(1, round(depth * n))
            agreement.append(f"{report.greedy_agreement_by_layer[layers - 1]:.2f} (L={layers})")
        table.add_row(
            report.model,
            str(n),
            f"{report.num_tokens} (time budget)" if report.is_cut_by_time_budget else str(report.num_tokens),
            *agreement,
            f"{report.mean_exit_layer_by_layer[-1]:.2f}",
            f"{report.tokens_per_second:.1f}",
            f"{report.time_per_output_token_seconds * 1000:.1f}",
            f"{report.peak_memory_bytes / 2**20:.0f} MiB",
        )
    return table
