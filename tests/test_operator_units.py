"""Pure parts of the operator: manifests, conditions, metrics parsing and aggregation, RBAC, endpoints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from helios_operator.k8s import manifests, rbac, workers
from helios_operator.k8s.conditions import ready_summary, set_condition
from helios_operator.k8s.kube import PATHS
from helios_operator.k8s.scrape import WorkerSample, aggregate, parse_metrics
from helios_operator.spec import HeliosDeploymentSpec
from helios_operator.worker_metrics import MetricsError, WorkerCounters
from tests.test_worker_metrics import exposition, text, worker

NOW = datetime(2026, 1, 1, tzinfo=UTC)
OWNER = {
    "apiVersion": "helios.dev/v1alpha1",
    "kind": "HeliosDeployment",
    "metadata": {"name": "demo", "namespace": "ml", "uid": "u-1"},
}


def make_spec(**fields: Any) -> HeliosDeploymentSpec:
    return HeliosDeploymentSpec.model_validate({"candidates": [{"name": "a", "model": "org/a"}], **fields})


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]["template"]["spec"] if manifest["kind"] == "Deployment" else manifest["spec"]
    return spec["containers"][0]


def env(manifest: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(manifest)["env"]}


# --- manifests -------------------------------------------------------------------------------------


def test_deployment_is_hardened_owned_and_rolls_without_downtime() -> None:
    spec = make_spec(replicas=2, worker={"resources": {"limits": {"nvidia.com/gpu": 1}}})
    deployment = manifests.build_deployment(OWNER, spec, spec.candidates[0], 5, "img:1")
    assert deployment["metadata"]["ownerReferences"][0] == {
        "apiVersion": "helios.dev/v1alpha1",
        "kind": "HeliosDeployment",
        "name": "demo",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    main = container(deployment)
    assert main["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
    assert main["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert main["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/health"
    assert main["startupProbe"]["failureThreshold"] * main["startupProbe"]["periodSeconds"] >= 1800
    values = env(deployment)
    assert values["HELIOS_MODEL"] == "org/a" and values["HELIOS_MODE"] == "serve"
    # The layer count is outside the template: a layer change must not roll the pods.
    assert values["HELIOS_LAYERS"] == {"configMapKeyRef": {"name": "demo-serving", "key": "layers"}}
    assert manifests.build_serving_configmap(OWNER, 5)["data"] == {"layers": "5"}
    assert manifests.build_deployment(OWNER, spec, spec.candidates[0], 4, "img:1") == deployment
    assert values["HELIOS_MODEL_NAME"] == "a" and int(values["HELIOS_RECORD_PROMPTS"]) >= 5
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert "HELIOS_EXIT_HISTOGRAM" not in values and "HELIOS_EXIT_GATE" not in values


def test_serving_workers_get_the_evaluation_exit_histogram_and_the_gate() -> None:
    """Workers place exit tests from the candidate's evaluation; the worker's own settings accept both."""
    from helios_worker.server.settings import ServerSettings

    spec = make_spec(exit={"gate": "saturation"})
    values = env(manifests.build_deployment(OWNER, spec, spec.candidates[0], 3, "img", exit_histogram=[4, 0, 9]))
    assert values["HELIOS_EXIT_HISTOGRAM"] == "4,0,9" and values["HELIOS_EXIT_GATE"] == "saturation"
    settings = ServerSettings.from_sources({}, {k: v for k, v in values.items() if isinstance(v, str)})
    assert settings.exit_histogram == "4,0,9" and settings.exit_gate == "saturation"


def test_model_volume_and_token_follow_the_spec() -> None:
    claim = make_spec(worker={"modelVolume": {"claimName": "models"}, "hfTokenSecretRef": {"name": "hf"}})
    deployment = manifests.build_deployment(OWNER, claim, claim.candidates[0], 1, "img")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "models"}
    assert env(deployment)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    cache = make_spec(worker={"modelVolume": {"cacheSizeLimit": "20Gi"}, "image": "mine:2"})
    deployment = manifests.build_deployment(OWNER, cache, cache.candidates[0], 1, "img")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["emptyDir"] == {"sizeLimit": "20Gi"}
    assert container(deployment)["image"] == "mine:2" and "tolerations" not in deployment["spec"]["template"]["spec"]


def test_evaluation_pod_carries_candidate_prompts_and_round() -> None:
    spec = make_spec(evaluation={"promptsPerCandidate": 2, "maxNewTokens": 7})
    pod = manifests.build_evaluation_pod(OWNER, spec, spec.candidates[0], 3, ["p1", "p2", "p3"], "img")
    assert pod["metadata"]["name"] == "demo-eval-3-a"
    assert pod["metadata"]["labels"][manifests.LABEL_ROUND] == "3"
    values = env(pod)
    assert values["HELIOS_MODE"] == "evaluate" and values["HELIOS_EVAL_PROMPTS"] == '["p1", "p2"]'
    assert values["HELIOS_MAX_NEW_TOKENS"] == "7" and '"name": "a"' in values["HELIOS_EVAL_CANDIDATES"]
    assert pod["spec"]["restartPolicy"] == "OnFailure"


def test_user_env_comes_last_so_it_can_override() -> None:
    spec = make_spec(worker={"env": [{"name": "HELIOS_PORT", "value": "9000"}]})
    names = [e["name"] for e in container(manifests.build_deployment(OWNER, spec, spec.candidates[0], 1, "i"))["env"]]
    assert names[-1] == "HELIOS_PORT" and names.count("HELIOS_PORT") == 2


# --- conditions ------------------------------------------------------------------------------------


def test_condition_transition_time_changes_only_when_status_flips() -> None:
    first = set_condition([], "Ready", "False", "Evaluating", "x", 1, NOW)
    later = NOW + timedelta(minutes=5)
    same = set_condition(first, "Ready", "False", "NoReadyWorkers", "y", 2, later)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert same[0]["reason"] == "NoReadyWorkers" and same[0]["observedGeneration"] == 2
    flipped = set_condition(same, "Ready", "True", "WorkersReady", "z", 2, later)
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert [c["type"] for c in set_condition(flipped, "SpecValid", "True", "Valid", "", 2, later)] == [
        "Ready",
        "SpecValid",
    ]


@pytest.mark.parametrize(
    ("phase", "ready", "desired", "expected"),
    [
        ("Serving", 1, 1, "True"),
        ("Adapting", 2, 3, "True"),
        ("Serving", 0, 1, "False"),
        ("Degraded", 1, 1, "False"),
        ("Invalid", 0, 1, "False"),
        ("Evaluating", 0, 1, "False"),
        ("Serving", 0, 0, "False"),
    ],
)
def test_ready_summary(phase: str, ready: int, desired: int, expected: str) -> None:
    assert ready_summary(phase, ready, desired)[0] == expected


# --- metrics ---------------------------------------------------------------------------------------


def test_parse_metrics_reads_the_model_counters_layers_and_buckets() -> None:
    sample = parse_metrics(exposition(100, 7, [50, 80, 100]), NOW)
    assert (sample.observed_at, sample.model, sample.counters.layers, sample.counters.layers_total) == (NOW, "a", 3, 8)
    assert (sample.counters.tokens, sample.counters.breaches, sample.counters.requests) == (100, 7, 4)
    assert sample.counters.exit_buckets[2.0] == 80


def test_parse_metrics_accepts_a_fresh_worker_that_has_served_nothing() -> None:
    # Its labelled counters have no children yet; helios_model_info names the model. Not Degraded.
    sample = parse_metrics(text(worker()), NOW)
    assert (sample.model, sample.counters.layers, sample.counters.tokens) == ("ee-tiny", 4, 0)


@pytest.mark.parametrize(
    "text", ["", "helios_layers_loaded 3\n", "this is not prometheus {{{\n", exposition(1, 0).replace('model="a"', "")]
)
def test_parse_metrics_rejects_what_it_cannot_use(text: str) -> None:
    with pytest.raises(MetricsError):
        parse_metrics(text, NOW)


def sample(tokens: float, breaches: float, seconds: float = 0, model: str = "a", layers: int = 3, **kw: Any) -> Any:
    counters = WorkerCounters(layers, 8, model, tokens, breaches, 0, **kw)
    return WorkerSample(NOW + timedelta(seconds=seconds), model, counters)


def test_aggregate_sums_deltas_over_pods_and_builds_the_exit_histogram() -> None:
    before = {"p1": sample(100, 10, exit_buckets={1.0: 50, 2.0: 80, 3.0: 100}), "p2": sample(0, 0)}
    after = {
        "p1": sample(120, 15, 10, exit_buckets={1.0: 55, 2.0: 90, 3.0: 120}),
        "p2": sample(30, 3, 10),
        "p3": sample(999, 999, 10),  # first sight: a baseline only
    }
    result = aggregate(before, after, {"a": "a"}, NOW)
    telemetry = result.telemetry
    assert telemetry is not None
    assert (telemetry.num_new_tokens, telemetry.num_new_breaches) == (50, 8)
    # p2 has no histogram, so the per-layer counts would not add up to the tokens: unknown.
    assert telemetry.exit_histogram == []
    assert result.tokens_per_second == pytest.approx(5.0) and result.num_scraped == 3

    only_p1 = aggregate({"p1": before["p1"]}, {"p1": after["p1"]}, {}, NOW).telemetry
    assert only_p1 is not None and only_p1.exit_histogram == [5, 5, 10]


def test_aggregate_handles_restarts_and_mid_switch_pods() -> None:
    restarted = aggregate({"p": sample(500, 50)}, {"p": sample(20, 4, 5)}, {}, NOW).telemetry
    assert restarted is not None and (restarted.num_new_tokens, restarted.num_new_breaches) == (20, 4)
    # Two pods already on 5 layers of org/a (named by reference), one still on 3: the majority speaks.
    before = {"p1": sample(0, 0, layers=5, model="org/a"), "p2": sample(0, 0, layers=5, model="org/a")}
    after = {**{k: sample(10, 1, 5, layers=5, model="org/a") for k in before}, "p3": sample(10, 9, 5)}
    telemetry = aggregate(before, after, {"org/a": "a"}, NOW).telemetry
    assert telemetry is not None and (telemetry.model, telemetry.layers, telemetry.num_new_tokens) == ("a", 5, 20)
    assert aggregate({}, {}, {}, NOW).telemetry is None


# --- endpoints and RBAC -----------------------------------------------------------------------------


def test_endpoint_uses_pod_ip_unless_the_annotation_is_allowed() -> None:
    annotations = {
        manifests.ENDPOINT_ANNOTATION: "http://127.0.0.1:9/",
        manifests.CONTROL_ENDPOINT_ANNOTATION: "http://h:7",
    }
    pod = {
        "metadata": {"annotations": annotations},
        "status": {"phase": "Running", "podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert workers.endpoint(pod, 8000, allow_annotation=False) == "http://10.0.0.7:8000"
    assert workers.endpoint(pod, 8001, allow_annotation=False, control=True) == "http://10.0.0.7:8001"
    assert workers.endpoint(pod, 8000, allow_annotation=True) == "http://127.0.0.1:9"
    assert workers.endpoint(pod, 8001, allow_annotation=True, control=True) == "http://h:7"
    assert workers.is_ready(pod)
    assert not workers.is_ready({**pod, "metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})


def test_rbac_rules_cover_every_kind_the_operator_writes() -> None:
    rules = {(r["apiGroups"][0], r["resources"][0]): set(r["verbs"]) for r in rbac.rules()}
    assert {"create", "delete", "list"} <= rules[("", "pods")]
    assert {"create", "patch"} <= rules[("apps", "deployments")]
    assert {"create", "patch"} <= rules[("helios.dev", "heliosstatuses")]
    assert "patch" in rules[("helios.dev", "heliosdeployments/status")]
    assert "create" in rules[("", "events")]
    assert all("*" not in verbs for verbs in rules.values())
    for prefix, plural in PATHS.values():  # every kind kube.py touches is granted
        group = "" if prefix == "/api/v1" else prefix.split("/")[2]
        assert (group, plural) in rules, plural


def test_default_worker_resources_apply_only_to_specs_without_any(monkeypatch):
    from helios_operator.k8s.config import OperatorConfig
    from helios_operator.k8s.manifests import worker_pod_spec
    from helios_operator.spec import HeliosDeploymentSpec

    monkeypatch.setenv("HELIOS_DEFAULT_WORKER_RESOURCES", '{"limits": {"nvidia.com/gpu": 1, "memory": "8Gi"}}')
    config = OperatorConfig.from_env()
    bare = HeliosDeploymentSpec.model_validate({"candidates": [{"name": "a", "model": "m"}]})
    pod = worker_pod_spec(config.apply_defaults(bare), "img", [], "Always")
    assert pod["containers"][0]["resources"]["limits"]["memory"] == "8Gi"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"  # the default GPU limit schedules on GPU nodes
    own = HeliosDeploymentSpec.model_validate(
        {"candidates": [{"name": "a", "model": "m"}], "worker": {"resources": {"requests": {"cpu": "1"}}}}
    )
    assert config.apply_defaults(own) == own

    monkeypatch.setenv("HELIOS_DEFAULT_WORKER_RESOURCES", "{not json")
    with pytest.raises(ValueError, match="HELIOS_DEFAULT_WORKER_RESOURCES must be JSON"):
        OperatorConfig.from_env()


def test_decision_history_collapses_repeated_holds_and_reassessments_between_changes() -> None:
    from datetime import UTC, datetime

    from helios_operator.k8s.report import append_history
    from helios_operator.policy import Decision
    from helios_operator.spec import MAX_DECISION_HISTORY

    def decision(kind: str, layers: int = 4) -> Decision:
        return Decision(kind=kind, model="a", layers=layers, reason=kind, timestamp=datetime.now(UTC))

    history: list = []
    for kind in ("select", "reassess", "hold", "reassess", "hold", "reassess", "hold", "add_layers", "hold"):
        history = append_history(history, decision(kind))
    assert [(h["kind"], h.get("repeats")) for h in history] == [
        ("select", None),
        ("reassess", 3),
        ("hold", 3),
        ("add_layers", None),
        ("hold", None),
    ]
    for _ in range(200):  # a long quiet run keeps the changes
        history = append_history(history, decision("reassess"))
        history = append_history(history, decision("hold"))
    assert [h["kind"] for h in history][:4] == ["select", "reassess", "hold", "add_layers"]
    assert len(history) == 6 and history[-1]["repeats"] == 201
    for layers in range(1, 100):
        history = append_history(history, decision("add_layers", layers))
    assert len(history) == MAX_DECISION_HISTORY >= 50


def test_the_shadow_scorer_has_every_layer_and_no_service_traffic() -> None:
    spec = make_spec(monitoring={"shadow": {"fraction": 0.25}})
    candidate = spec.candidates[0]
    serving = manifests.build_deployment(OWNER, spec, candidate, 3, "img")
    assert env(serving)["HELIOS_SHADOW_FRACTION"] == "0.25"
    scorer = manifests.build_shadow_deployment(OWNER, spec, candidate, 8, "img")
    assert scorer["metadata"]["name"] == "demo-shadow" and scorer["spec"]["replicas"] == 1
    assert env(scorer)["HELIOS_LAYERS"] == "8" and "HELIOS_SHADOW_FRACTION" not in env(scorer)
    labels = scorer["spec"]["template"]["metadata"]["labels"]
    service_selector = manifests.build_service(OWNER)["spec"]["selector"]
    assert not service_selector.items() <= labels.items()  # the Service never routes users to the scorer
    assert "HELIOS_SHADOW_FRACTION" not in env(manifests.build_deployment(OWNER, make_spec(), candidate, 3, "img"))


def test_current_model_follows_the_rollout_and_progressing_reads_the_deployment() -> None:
    import asyncio
    from datetime import UTC, datetime

    from helios_operator.k8s.config import OperatorConfig
    from helios_operator.k8s.context import Context, Runtime
    from helios_operator.k8s.reconcile import rollout_progress

    class Kube:
        def __init__(self, deployment: dict) -> None:
            self.deployment = deployment

        def get(self, kind: str, namespace: str, name: str) -> dict:
            return self.deployment

    def progressing(deployment: dict, old: list[str], status: dict | None = None) -> tuple[dict, list]:
        ctx = Context(
            OWNER, make_spec(), status or {}, Runtime(), Kube(deployment), None, OperatorConfig(), datetime.now(UTC)
        )  # type: ignore[arg-type]
        ctx.runtime.state = type("S", (), {"model": "b"})()  # type: ignore[assignment]
        asyncio.run(rollout_progress(ctx, old))
        return next(c for c in ctx.status["conditions"] if c["type"] == "Progressing"), ctx.events

    stuck = {
        "status": {
            "conditions": [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet has timed out",
                }
            ]
        }
    }
    condition, events = progressing(stuck, [])
    assert (condition["status"], condition["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert [e[1] for e in events] == ["RolloutStuck"]
    condition, _ = progressing({}, ["a"])
    assert condition["reason"] == "ReplicaSetUpdated" and "pods of a still serve" in condition["message"]
    condition, _ = progressing({}, [])
    assert condition["reason"] == "NewReplicaSetAvailable"


def test_evaluation_pods_carry_the_time_budget_and_the_table_carries_the_bounds() -> None:
    from helios_operator.k8s.report import evaluation_table
    from tests.report_factory import make_report

    spec = make_spec(evaluation={"timeBudget": "45s"})
    pod = manifests.build_evaluation_pod(OWNER, spec, spec.candidates[0], 1, ["p"], "img")
    assert env(pod)["HELIOS_EVAL_TIME_BUDGET"] == "45"
    assert "HELIOS_EVAL_TIME_BUDGET" not in env(
        manifests.build_evaluation_pod(OWNER, make_spec(), spec.candidates[0], 1, ["p"], "img")
    )
    [row] = evaluation_table([make_report("a")], make_spec(), None, ("a", 4))
    assert (
        row.chosen
        and row.num_tokens
        and row.agreement_lower_bound is not None
        and row.agreement_lower_bound < row.agreement
    )
    assert row.breach_rate_upper_bound is not None


def test_worker_env_takes_values_from_secrets_and_the_pods_are_locked_down() -> None:
    spec = make_spec(
        worker={
            "env": [
                {"name": "HELIOS_API_KEY", "valueFrom": {"secretKeyRef": {"name": "api", "key": "key"}}},
                {"name": "PLAIN", "value": "1"},
            ]
        }
    )
    deployment = manifests.build_deployment(OWNER, spec, spec.candidates[0], 4, "img")
    values = env(deployment)
    assert values["HELIOS_API_KEY"] == {"secretKeyRef": {"name": "api", "key": "key"}} and values["PLAIN"] == "1"
    assert values["HELIOS_CONTROL_TOKEN"] == {"secretKeyRef": {"name": "demo-control", "key": "token"}}
    assert int(values["HELIOS_RECORD_PROMPTS"]) > 0  # the default source is recent traffic
    inline = make_spec(evaluation={"prompts": {"inline": ["p"]}})
    inline_env = env(manifests.build_deployment(OWNER, inline, inline.candidates[0], 4, "img"))
    assert inline_env["HELIOS_RECORD_PROMPTS"] == "0"  # users' prompts are not kept unless a reassessment reads them
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsUser"] == 10001
    with pytest.raises(ValidationError, match="give value or valueFrom, not both"):
        make_spec(
            worker={"env": [{"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
        )
    with pytest.raises(ValidationError, match="exactly one of secretKeyRef or configMapKeyRef"):
        make_spec(worker={"env": [{"name": "A", "valueFrom": {}}]})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HELIOS_OPERATOR_CONTROL_NETWORK_POLICY": "1"}, "needs HELIOS_OPERATOR_NAMESPACE"),
        ({"HELIOS_OPERATOR_TICK": "banana"}, "HELIOS_OPERATOR_TICK must be a number of seconds, got 'banana'"),
        ({"HELIOS_DEFAULT_WORKER_RESOURCES": "{bad"}, "HELIOS_DEFAULT_WORKER_RESOURCES must be JSON"),
    ],
)
def test_a_bad_operator_setting_is_one_line_before_kopf_starts(monkeypatch, capsys, env, expected) -> None:
    from helios_operator.cli import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["operator", "--standalone"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("helios operator: error: ") and expected in err and err.count("\n") == 1
