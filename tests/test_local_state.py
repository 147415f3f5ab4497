"""helios run's state file and config: round trip, resume-or-evaluate, spec fingerprint."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from helios_operator.local.config import candidate_ref, default_config_path, load_run_spec, spec_hash
from helios_operator.local.state import (
    Evaluate,
    LogEntry,
    Resume,
    RunState,
    StateFileError,
    WorkerRecord,
    load_state,
    plan_start,
    save_state,
)
from helios_operator.policy import select
from helios_operator.spec import HeliosDeploymentSpec, SpecError
from tests.report_factory import make_report

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)


def _spec(**overrides) -> HeliosDeploymentSpec:
    return HeliosDeploymentSpec.model_validate(
        {"candidates": [{"name": "alpha", "model": "test/alpha"}, {"name": "beta", "model": "test/beta"}], **overrides}
    )


def _served_state(spec: HeliosDeploymentSpec) -> RunState:
    reports = [make_report("alpha"), make_report("beta", tokens_per_second=50.0)]
    decision = select(reports, spec, None, NOW)
    state = RunState(spec_hash=spec_hash(spec), phase="Serving", reports=reports, decision=decision)
    state = state.with_log(LogEntry.from_decision(decision, NOW))
    return state.model_copy(
        update={"workers": [WorkerRecord(pid=123, url="http://127.0.0.1:9999", model="alpha", layers=2)]}
    )


def test_state_round_trips_through_the_file(tmp_path: Path):
    state = _served_state(_spec())
    path = tmp_path / "run" / "state.json"
    save_state(path, state)
    assert load_state(path) == state
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left behind


def test_missing_file_is_no_state_and_garbage_is_an_error(tmp_path: Path):
    assert load_state(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text('{"version": "something else"}')
    with pytest.raises(StateFileError, match="not a helios run state file"):
        load_state(tmp_path / "bad.json")


def test_resumes_only_a_decision_made_for_the_same_spec():
    spec = _spec()
    state = _served_state(spec)
    plan = plan_start(state, spec_hash(spec))
    assert isinstance(plan, Resume)
    assert plan.decision == state.decision and plan.reports == state.reports

    changed = _spec(objective="latency")
    assert isinstance(plan_start(state, spec_hash(changed)), Evaluate)
    assert isinstance(plan_start(None, spec_hash(spec)), Evaluate)
    undecided = state.model_copy(update={"decision": None})
    assert "before choosing" in plan_start(undecided, spec_hash(spec)).reason
    foreign = state.model_copy(update={"reports": [make_report("gamma")]})
    assert isinstance(plan_start(foreign, spec_hash(spec)), Evaluate)


def test_spec_hash_sees_meaning_not_spelling():
    assert spec_hash(_spec()) == spec_hash(_spec(objective="throughput"))  # the default, spelled out
    assert spec_hash(_spec()) != spec_hash(_spec(exit={"threshold": 0.7}))


def test_log_is_bounded():
    state = RunState(spec_hash="x")
    for number in range(250):
        state = state.with_log(LogEntry(at=NOW, kind="hold", message=str(number)))
    assert len(state.log) == 200 and state.log[-1].message == "249"


def test_default_config_is_valid_and_names_both_builtin_models():
    spec = load_run_spec(None)
    assert default_config_path().name == "default.yaml"
    assert [c.model for c in spec.candidates] == ["helios-ee-tiny", "smollm2-135m"]
    assert candidate_ref(spec, "ee-tiny") == "helios-ee-tiny"


def test_configmap_prompts_are_rejected_without_a_cluster(tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text(
        "candidates: [{name: a, model: helios-ee-tiny}]\nevaluation: {prompts: {configMapRef: {name: p}}}\n"
    )
    with pytest.raises(SpecError, match="needs Kubernetes"):
        load_run_spec(path)


def test_candidate_ref_carries_the_revision():
    spec = HeliosDeploymentSpec.model_validate({"candidates": [{"name": "a", "model": "org/m", "revision": "v2"}]})
    assert candidate_ref(spec, "a") == "org/m@v2"


def test_helios_status_falls_back_to_the_state_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    import json

    from helios_operator.cli import main
    from helios_operator.local.supervisor import free_port

    state = _served_state(_spec()).model_copy(update={"proxy_url": f"http://127.0.0.1:{free_port()}"})
    save_state(tmp_path / "state.json", state)
    assert main(["status", "--state-file", str(tmp_path / "state.json"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["source"].endswith("(not running)")
    assert shown["model"] == state.decision.model and shown["layers"] == state.decision.layers
    assert shown["log"][0]["kind"] == "select"

    assert main(["status", "--state-file", str(tmp_path / "absent.json"), "--url", state.proxy_url]) == 2
    assert "no helios run answers" in capsys.readouterr().err


def test_evaluation_prompts_follow_the_spec_source(tmp_path: Path):
    from helios_operator.local.evaluate import evaluation_prompts, write_prompts

    traffic = _spec(evaluation={"promptsPerCandidate": 2})
    assert evaluation_prompts(traffic, ["a", " ", "b", "c"]) == ["b", "c"]  # the most recent
    builtin = evaluation_prompts(traffic, [])
    assert len(builtin) == 2 and all(builtin)  # no traffic yet: the worker's built-in prompts
    inline = _spec(evaluation={"prompts": {"inline": ["x", "y", "z"]}, "promptsPerCandidate": 5})
    assert evaluation_prompts(inline, ["ignored"]) == ["x", "y", "z"]
    path = write_prompts(tmp_path / "p.txt", ["one\ntwo", "three"])
    assert path.read_text().splitlines() == ["one two", "three"]
