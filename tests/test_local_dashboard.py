"""The dashboard panel is a pure function of a RunStatus: what it shows."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from helios_operator.local.dashboard import evaluated_text, render
from helios_operator.local.snapshot import Evaluated, RunStatus, SeriesPoint
from helios_operator.local.state import LogEntry
from helios_operator.policy import Decision, select
from tests.report_factory import make_report, make_spec

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
        evaluated=Evaluated(
            agreement=0.97,
            agreement_lower_bound=0.9412,
            breach_rate=0.1,
            breach_rate_upper_bound=0.1427,
            num_tokens=256,
            min_agreement=0.9,
        ),
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
    assert "agreement 0.970 (>= 0.941 at 95%, n=256; floor 0.9), breach rate 0.10 (<= 0.14 at 95%)" in text
    assert "12.5 tok/s, window breach rate 0.10" in text
    assert "10 forwarded, 0 failed; 0 switches, 1 layer changes" in text
    assert "breach storm: 60 breaches" in text
    assert "old 19" in text and "old 0" not in text  # only the newest entries


def test_panel_before_anything_is_served():
    text = _text(RunStatus(phase="Evaluating", message="evaluating ee-tiny (1/2)", spec_hash="abc"))
    assert "Evaluating  evaluating ee-tiny (1/2)" in text
    assert "no scrape yet" in text


def test_the_evaluated_figures_come_from_the_decision_when_it_has_them():
    report = make_report(tokens_per_count=1)
    decision = select([report], make_spec(candidates=["alpha"]), None)
    evaluated = Evaluated.from_decision(decision, 0.98)
    assert evaluated is not None and evaluated.num_tokens == 100 and evaluated.min_agreement == 0.98
    assert evaluated.agreement_lower_bound == report.greedy_agreement_lower_bound_by_layer[decision.layers - 1]
    # A decision saved before the bounds were recorded (or a hold) shows nothing rather than guesses.
    old = Decision(kind="select", model="alpha", layers=3, reason="old", agreement=0.99, breach_rate=0.1)
    assert Evaluated.from_decision(old) is None and Evaluated.from_decision(None) is None
    assert evaluated_text(None) == "-"
