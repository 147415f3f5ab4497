"""`helios decide`: the CLI contract on report files, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helios_operator import cli
from helios_operator.policy import select
from tests.report_factory import MB, make_report, make_spec, ramp

AGREEMENT = [0.90, 0.95, 0.985, 0.99, 0.995, 0.998, 1.0, 1.0]


@pytest.fixture(autouse=True)
def only_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    # The parser imports every registered command; keep these tests about `decide` alone.
    monkeypatch.setattr(cli, "COMMANDS", {"decide": cli.COMMANDS["decide"]})


def write_reports(tmp_path: Path, reports: list) -> Path:
    path = tmp_path / "reports.json"
    path.write_text(json.dumps([report.model_dump(mode="json") for report in reports]))
    return path


def run_decide(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(["decide", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_decide_is_registered() -> None:
    assert cli.COMMANDS["decide"] == "helios_operator.commands.decide"


def test_decide_prints_the_decision_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reports = [
        make_report("alpha", greedy_agreement=AGREEMENT),
        make_report("beta", greedy_agreement=AGREEMENT, tokens_per_second=250.0),
    ]
    path = write_reports(tmp_path, reports)
    status, out, err = run_decide(capsys, "--reports", str(path), "--json")
    assert (status, err) == (0, "")
    decision = json.loads(out)
    for key in ("model", "layers", "reason", "tokens_per_second", "agreement", "max_batch_size"):
        assert key in decision
    assert decision["num_tokens"] == 100_000
    assert 0.98 < decision["agreement_lower_bound"] < 0.985
    assert 0.2 < decision["breach_rate_upper_bound"] < 0.205  # rate 0.20 at L=3 (the default histogram)
    expected = select(reports, make_spec(exit={"headCostLayers": None}), None)
    assert (decision["model"], decision["layers"]) == ("beta", 3) == (expected.model, expected.layers)
    assert decision["tokens_per_second"] == pytest.approx(expected.tokens_per_second)
    assert decision["agreement"] == pytest.approx(0.985)
    assert decision["max_batch_size"] is None  # no budget given
    assert decision["objective"] == "throughput"


def test_decide_flags_change_the_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reports = [
        make_report("alpha", greedy_agreement=AGREEMENT, tokens_per_second=300.0, kv_bytes_per_token_per_layer=4000),
        make_report("beta", greedy_agreement=AGREEMENT, kv_bytes_per_token_per_layer=500),
    ]
    path = str(write_reports(tmp_path, reports))
    _, out, _ = run_decide(capsys, "--reports", path, "--json")
    assert json.loads(out)["model"] == "alpha"
    args = ["--objective", "batchSize", "--memory-budget", "2GiB", "--context-tokens", "1024", "--json"]
    status, out, _ = run_decide(capsys, "--reports", path, *args)
    decision = json.loads(out)
    assert status == 0 and decision["model"] == "beta"
    assert decision["memory_budget_bytes"] == 2 * 2**30 and decision["context_tokens"] == 1024
    # budget 2 GiB, weights 350 MB at L=3, KV 500 B x 3 layers x 1024 tokens per sequence
    assert decision["max_batch_size"] == (2 * 2**30 - 350 * MB) // (500 * 3 * 1024)
    _, out, _ = run_decide(capsys, "--reports", path, "--min-agreement", "0.95", "--json")
    # the floor would allow 2 layers; the breach budget (25 per 100 tokens by default) needs 3
    assert json.loads(out)["layers"] == 3


def test_decide_takes_settings_from_a_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(write_reports(tmp_path, [make_report("alpha", greedy_agreement=AGREEMENT)]))
    spec = tmp_path / "helios.yaml"
    spec.write_text("candidates: [{name: alpha, model: test/alpha}]\naccuracy: {minAgreement: 0.985}\n")
    _, out, _ = run_decide(capsys, "--reports", path, "--spec", str(spec), "--json")
    assert json.loads(out)["layers"] == 4  # L=3 measures 0.985, but not at 95%
    _, out, _ = run_decide(capsys, "--reports", path, "--spec", str(spec), "--min-agreement", "0.9", "--json")
    assert json.loads(out)["layers"] == 3  # the floor would allow 1; the breach budget needs 3


def test_decide_without_json_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(write_reports(tmp_path, [make_report("alpha", greedy_agreement=ramp(0.5, 0.9, 8))]))
    status, out, _ = run_decide(capsys, "--reports", path)
    assert status == 0
    assert "model:      alpha" in out and "layers:     8 of 8" in out
    assert "agreement:  0.900 (>= 0.898 at 95%, n=100000 evaluation tokens)" in out
    assert "no option reaches agreement 0.98 at 95%" in out
    assert "agreement 0.900 (>= 0.898 at 95%, n=100000)" in out  # the reason gives the same figures


def _bad_report_file(tmp_path: Path) -> Path:
    report = make_report("alpha").model_dump(mode="json")
    report["breach_rate_by_layer"] = report["breach_rate_by_layer"][:3]
    path = tmp_path / "bad-report.json"
    path.write_text(json.dumps([report]))
    return path


@pytest.mark.parametrize(
    ("make_file", "extra", "words"),
    [
        (lambda tmp: tmp / "absent.json", [], "cannot read"),
        (lambda tmp: (tmp / "x.json").write_text("[{not json") and tmp / "x.json", [], "is not valid JSON"),
        (lambda tmp: (tmp / "x.json").write_text("{}") and tmp / "x.json", [], "non-empty JSON list"),
        (_bad_report_file, [], "report [0]: breach_rate_by_layer must have num_layers_total=8 entries"),
        (
            lambda tmp: write_reports(tmp, [make_report()]),
            ["--objective", "batchSize"],
            "objective batchSize needs a memory budget",
        ),
        (
            lambda tmp: write_reports(tmp, [make_report()]),
            ["--memory-budget", "lots"],
            "--memory-budget: invalid quantity",
        ),
        (lambda tmp: write_reports(tmp, [make_report()]), ["--memory-budget", "1Mi"], "nothing fits"),
        (lambda tmp: write_reports(tmp, [make_report()]), ["--min-agreement", "2"], "--min-agreement: Input should be"),
        (
            lambda tmp: write_reports(tmp, [make_report()]),
            ["--context-tokens", "x"],
            "--context-tokens: Input should be",
        ),
        (lambda tmp: write_reports(tmp, [make_report()]), ["--spec", "/nonexistent.yaml"], "cannot read"),
    ],
)
def test_decide_bad_input_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_file, extra: list[str], words: str
) -> None:
    path = make_file(tmp_path)
    status, out, err = run_decide(capsys, "--reports", str(path), *extra, "--json")
    assert status == 2
    assert out == ""
    assert err.startswith("helios decide: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert words in err


def test_decide_does_not_import_torch() -> None:
    code = "import sys, helios_operator.commands.decide; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
