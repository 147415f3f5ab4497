"""The live terminal view of ``helios run`` (and the one-shot view of ``helios status``).

``render`` is a pure function of a ``RunStatus``, so ``helios status`` draws the same panel
from the proxy's /helios/status or the state file as the live dashboard does.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from helios_operator.local.snapshot import Evaluated, RunStatus
from helios_operator.local.state import LogEntry

_PHASE_STYLE = {"Serving": "green", "Adapting": "yellow", "Evaluating": "cyan", "Degraded": "red", "Failed": "bold red"}
_KIND_STYLE = {
    "select": "green",
    "switch_model": "magenta",
    "add_layers": "yellow",
    "drop_layers": "cyan",
    "worker_crashed": "red",
    "error": "red",
    "hold": "dim",
}
SHOWN_DECISIONS = 12


def evaluated_text(evaluated: Evaluated | None) -> str:
    """The figures the setting was chosen on, with the bounds the policy compared."""
    if evaluated is None:
        return "-"
    floor = "" if evaluated.min_agreement is None else f"; floor {evaluated.min_agreement:g}"
    return (
        f"agreement {evaluated.agreement:.3f} (>= {evaluated.agreement_lower_bound:.3f} at 95%, "
        f"n={evaluated.num_tokens}{floor}), breach rate {evaluated.breach_rate:.2f} "
        f"(<= {evaluated.breach_rate_upper_bound:.2f} at 95%)"
    )


def _overview(status: RunStatus) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    phase = Text(status.phase, style=_PHASE_STYLE.get(status.phase, ""))
    if status.message:
        phase.append(f"  {status.message}", style="dim")
    latest = status.series[-1] if status.series else None
    layers = "-" if status.layers is None else f"{status.layers} of {status.layers_total or '?'}"
    rows = [
        ("phase", phase),
        ("endpoint", f"{status.proxy_url or '-'}/v1  (model 'helios')"),
        ("model", f"{status.model or '-'}  layers {layers}"),
        ("evaluated", evaluated_text(status.evaluated)),
        ("worker", f"pid {status.worker_pid}  {status.worker_url}" if status.worker_pid else "-"),
        (
            "traffic",
            f"{latest.tokens_per_second:.1f} tok/s, window breach rate {latest.window_breach_rate:.2f}"
            if latest
            else "no scrape yet",
        ),
        (
            "requests",
            f"{status.num_forwarded} forwarded, {status.num_failed} failed; {status.num_switches} switches, "
            f"{status.num_layer_changes} layer changes, {status.num_worker_restarts} worker restarts",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def decision_table(log: list[LogEntry], limit: int = SHOWN_DECISIONS) -> Table:
    table = Table(title="decisions and events (newest last)", expand=True, title_justify="left")
    table.add_column("time", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("L", justify="right")
    table.add_column("why", ratio=1)
    for entry in log[-limit:]:
        table.add_row(
            entry.at.strftime("%H:%M:%S"),
            Text(entry.kind, style=_KIND_STYLE.get(entry.kind, "")),
            entry.model or "",
            "" if entry.layers is None else str(entry.layers),
            entry.message,
        )
    return table


def render(status: RunStatus) -> RenderableType:
    return Group(Text(f"HELIOS  spec {status.spec_hash}", style="bold"), _overview(status), decision_table(status.log))


class Dashboard:
    """Redraws ``render(snapshot())`` a few times a second until stopped."""

    def __init__(self, snapshot: Callable[[], RunStatus], console: Console | None = None) -> None:
        self._live = Live(
            get_renderable=lambda: render(snapshot()),
            console=console or Console(stderr=True),
            refresh_per_second=2,
            transient=False,
        )

    def __enter__(self) -> Dashboard:
        self._live.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._live.__exit__(None, None, None)
