"""The dashboard panel is a pure function of a RunStatus: what it shows."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from helios_operator.local.dashboard import render
from helios_operator.local.snapshot import RunStatus, SeriesPoint
from helios_operator.local.state import LogEntry

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)


def _text(status: RunStatus) -> str:
    console = Console(record=True, width=160)
    console.print(render(status))
    return console.export_text()


def test_panel_shows_setting_traffic_and_the_newest_decisions():
    log = [LogEntry(at=NOW, kind="hold", message=f"old {n}") for n in range(20)]
    log.append(LogEntry(at=NOW, kind="add_layers", model="ee-tiny", layers=7, message="breach storm: 60 breaches"))
    status = RunStatus(
        phase="Serving",
        spec_hash="abc123",
        proxy_url="http://127.0.0.1:8080",
        model="ee-tiny",
        layers=7,
        layers_total=8,
        worker_pid=42,
        worker_url="http://127.0.0.1:5555",
        num_forwarded=10,
        num_layer_changes=1,
        log=log,
        series=[
            SeriesPoint(
                at=NOW,
                model="ee-tiny",
                layers=7,
                num_new_tokens=20,
                num_new_breaches=2,
                tokens_per_second=12.5,
                window_breach_rate=0.1,
            )
        ],
    )
    text = _text(status)
    assert "ee-tiny  layers 7 of 8" in text
    assert "12.5 tok/s, window breach rate 0.10" in text
    assert "10 forwarded, 0 failed; 0 switches, 1 layer changes" in text
    assert "breach storm: 60 breaches" in text
    assert "old 19" in text and "old 0" not in text  # only the newest entries


def test_panel_before_anything_is_served():
    text = _text(RunStatus(phase="Evaluating", message="evaluating ee-tiny (1/2)", spec_hash="abc"))
    assert "Evaluating  evaluating ee-tiny (1/2)" in text
    assert "no scrape yet" in text
