"""`helios evaluate`: JSON reports on stdout, prompts from a file or a worker, one-line errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from helios_contracts.reports import EvaluationReport
from helios_operator import cli

PROMPTS = ["the quick brown fox", "def add(a, b):"]


@pytest.fixture(autouse=True)
def only_evaluate(monkeypatch: pytest.MonkeyPatch) -> None:
    # The parser imports every registered command; keep these tests about `evaluate` alone.
    monkeypatch.setattr(cli, "COMMANDS", {"evaluate": cli.COMMANDS["evaluate"]})


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n\n")
    return path


def run_evaluate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(["evaluate", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def worker_url() -> Iterator[str]:
    """A stand-in serving worker answering GET /v1/helios/recent-prompts on a free port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/v1/helios/recent-prompts":
                body, status = json.dumps({"prompts": PROMPTS[:1]}).encode(), 200
            else:
                body, status = b"{}", 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_evaluate_is_registered() -> None:
    assert cli.COMMANDS["evaluate"] == "helios_worker.commands.evaluate"


def test_json_reports_round_trip(tiny_model, prompts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    candidates = f"llama={tiny_model('llama')},{tiny_model('opt')}"
    args = ["--candidates", candidates, "--prompts", str(prompts_file), "--max-new-tokens", "3", "--json"]
    status, out, _ = run_evaluate(capsys, *args, "--exit-threshold", "0.5")
    assert status == 0
    reports = [EvaluationReport.model_validate(item) for item in json.loads(out)]
    assert [r.model for r in reports] == ["llama", str(tiny_model("opt"))]
    assert [r.architecture for r in reports] == ["llama", "opt"]
    for report in reports:
        assert report.num_prompts == 2 and report.exit_threshold == 0.5
        assert 0 < report.num_tokens <= 6 and sum(report.exit_layer_histogram) == report.num_tokens


def test_table_output(tiny_model, prompts_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--candidates", f"tiny={tiny_model('llama')}", "--prompts", str(prompts_file), "--max-new-tokens", "2"]
    status, out, _ = run_evaluate(capsys, *args)
    assert status == 0
    assert "tiny" in out and "agree @50%" in out and "(L=2)" in out


def test_a_time_budget_cuts_the_reports_tokens(
    tiny_model, prompts_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--candidates", str(tiny_model("llama")), "--prompts", str(prompts_file), "--max-new-tokens", "8"]
    status, out, _ = run_evaluate(capsys, *args, "--time-budget", "0.000001", "--json")
    assert status == 0
    [report] = json.loads(out)
    assert report["is_cut_by_time_budget"] and report["num_tokens"] == report["num_prompts"] == 2
    status, out, _ = run_evaluate(capsys, *args, "--time-budget", "0.000001")
    assert status == 0 and "2 (time budget)" in out


def test_prompts_from_a_worker(tiny_model, worker_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--candidates", str(tiny_model("llama")), "--from", worker_url, "--max-new-tokens", "2", "--json"]
    status, out, _ = run_evaluate(capsys, *args)
    assert status == 0
    assert json.loads(out)[0]["num_prompts"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--candidates", "no/such-model"], "no/such-model"),
        (["--candidates", "/nonexistent/model-dir"], "/nonexistent/model-dir"),
        (["--candidates", "a=,b"], "use REF or NAME=REF"),
        (["--candidates", "x", "--exit-threshold", "1.5"], "--exit-threshold must be in (0, 1]"),
        (["--candidates", "x", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--candidates", "x", "--time-budget", "0"], "--time-budget must be > 0 seconds"),
    ],
)
def test_bad_settings_fail_in_one_line(
    args: list[str], message: str, prompts_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_evaluate(capsys, *args, "--prompts", str(prompts_file))
    assert (status, out) == (2, "")
    assert err.startswith("helios evaluate: error: ") and message in err
    assert err.count("\n") == 1


def test_unusable_prompt_sources_fail_in_one_line(
    tiny_model, tmp_path: Path, worker_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(tiny_model("llama"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    for source, message in (
        (["--prompts", str(tmp_path / "missing.txt")], "cannot read --prompts"),
        (["--prompts", str(empty)], "has no prompts"),
        (["--from", "http://127.0.0.1:9"], "cannot reach http://127.0.0.1:9/v1/helios/recent-prompts"),
        (["--from", worker_url + "/wrong"], "answered HTTP 404"),
    ):
        status, out, err = run_evaluate(capsys, "--candidates", model, *source)
        assert (status, out) == (2, ""), source
        assert message in err and err.count("\n") == 1, err


def test_a_prompt_source_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["evaluate", "--candidates", "x"])
    assert raised.value.code == 2
    assert "one of the arguments --prompts --from is required" in capsys.readouterr().err
