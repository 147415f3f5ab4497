"""``helios run`` with calibrated exits (issue 11): a candidate with ``calibrate`` is calibrated in a
subprocess (sidecar under the run's state dir) before its evaluation, which records the exits, and
its serving worker gets them; a candidate's own ``exits`` is passed through as given."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import pytest

from helios_operator.local.calibrate import CalibrationFailed, CalibrationJob, calibrate, exits_dirs
from helios_operator.local.config import load_run_spec
from helios_operator.local.evaluate import EvaluationJob
from helios_operator.local.supervisor import WorkerSettings, free_port, serve_command
from helios_operator.spec import HeliosDeploymentSpec, SpecError
from helios_worker.exit_sidecar import MANIFEST_FILE
from tests.test_local_e2e import _kill, _start, _state, _wait_ready

# A few hundred tokens of plain text: enough for helios calibrate's minimum of 100, fitted in seconds.
TEXT = "\n".join(
    f"line {n}: operators reconcile custom resources, and early exit lets easy tokens leave sooner." for n in range(40)
)


def spec_of(*candidates: dict) -> HeliosDeploymentSpec:
    return HeliosDeploymentSpec.model_validate({"candidates": list(candidates)})


def test_exits_reach_the_evaluation_and_serving_commands(tmp_path: Path) -> None:
    spec = spec_of(
        {"name": "given", "model": "helios-ee-tiny", "exits": "file:///sidecars/tiny"},
        {"name": "relative", "model": "helios-ee-tiny", "exits": "sidecars/tiny"},
        {"name": "fitted", "model": "helios-ee-tiny", "calibrate": {"texts": {"path": "texts.txt"}}},
        {"name": "plain", "model": "helios-ee-tiny"},
    )
    exits = exits_dirs(spec, tmp_path / "exits")
    assert exits == {"given": "/sidecars/tiny", "relative": "sidecars/tiny", "fitted": str(tmp_path / "exits/fitted")}
    job = EvaluationJob("fitted", "helios-ee-tiny", tmp_path / "p.txt", 4, 0.8, exits=exits["fitted"])
    command = job.command()
    assert command[command.index("--exits") + 1] == f"fitted={tmp_path / 'exits/fitted'}"
    assert "--exits" not in EvaluationJob("plain", "helios-ee-tiny", tmp_path / "p.txt", 4, 0.8).command()
    serve = serve_command(WorkerSettings("given", "helios-ee-tiny", 4, 0.8, exits="/sidecars/tiny"), 1, "h", 1.0)
    assert serve[serve.index("--exits") + 1] == "/sidecars/tiny"
    assert "--exits" not in serve_command(WorkerSettings("plain", "helios-ee-tiny", 4, 0.8), 1, "h", 1.0)


def test_calibration_texts_from_a_configmap_need_kubernetes(tmp_path: Path) -> None:
    config = tmp_path / "helios.yaml"
    config.write_text(
        "candidates:\n  - name: a\n    model: helios-ee-tiny\n    calibrate: {texts: {configMapRef: {name: texts}}}\n"
    )
    with pytest.raises(SpecError, match="configMapRef needs Kubernetes"):
        load_run_spec(config)


@pytest.mark.timeout(60)
def test_a_calibration_runs_once_per_settings(tmp_path: Path) -> None:
    (tmp_path / "texts.txt").write_text(TEXT)
    texts = {"path": str(tmp_path / "texts.txt")}
    spec = spec_of({"name": "fitted", "model": "/nonexistent/model", "calibrate": {"texts": texts}})
    job = CalibrationJob.of(spec.candidates[0], tmp_path / "exits")
    assert not job.is_done
    with pytest.raises(CalibrationFailed, match="/nonexistent/model"):  # really run: the model is not there
        asyncio.run(calibrate(job, timeout=50))
    # A sidecar recorded for these settings is used as it is, without running helios calibrate.
    job.out.mkdir(parents=True)
    (job.out / MANIFEST_FILE).write_text("{}")
    job.hash_file.write_text(job.fingerprint)
    assert asyncio.run(calibrate(job, timeout=50)) == job.out
    for change in ({"revision": "other"}, {"model": "/nonexistent/other"}):
        assert not CalibrationJob.of(spec.candidates[0].model_copy(update=change), tmp_path / "exits").is_done
    tokens = spec.candidates[0].calibrate.model_copy(update={"tokens": 999})
    assert not CalibrationJob.of(
        spec.candidates[0].model_copy(update={"calibrate": tokens}), tmp_path / "exits"
    ).is_done


CONFIG = """\
candidates:
  - name: fitted
    model: helios-ee-tiny
    calibrate:
      texts:
        path: {texts}
      tokens: 400
accuracy:
  minAgreement: 0.5
evaluation:
  promptsPerCandidate: 2
  maxNewTokens: 4
monitoring:
  interval: 1s
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_helios_run_calibrates_then_evaluates_and_serves_with_the_exits(tmp_path: Path) -> None:
    (tmp_path / "texts.txt").write_text(TEXT)
    (tmp_path / "helios.yaml").write_text(CONFIG.format(texts=tmp_path / "texts.txt"))
    port = free_port()
    run = _start(tmp_path, port, "run")
    started = [run.pid]
    try:
        _wait_ready(run, f"http://127.0.0.1:{port}", tmp_path / "run.log")
        state = _state(tmp_path)
        started += [worker.pid for worker in state.workers]
        sidecar = tmp_path / "state" / "exits" / "fitted"
        assert (sidecar / MANIFEST_FILE).is_file()
        [report] = state.reports
        assert report.exits is not None, "the evaluation did not use the calibrated exits"
        [worker] = state.workers
        cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"--exits") + 1] == str(sidecar).encode()
        assert any("calibrated the exits of fitted" in entry.message for entry in state.log)
    finally:
        run.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.wait(30)
        _kill(started)
