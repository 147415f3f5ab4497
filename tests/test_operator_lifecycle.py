"""The operator end to end against the Kubernetes API emulator, with fake workers on 127.0.0.1.

The test plays kubelet and the ReplicaSet controller: it marks pods Running/Ready, gives them a
``helios.dev/endpoint`` annotation pointing at a fake worker, and creates the serving pods the
Deployment asks for. Timers run every 0.3 s and the spec scrapes every 0.4 s, so each phase
settles in about a second.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from helios_operator.crds import crd_files
from tests.operator_fakes import FakeWorker, FakeWorkers
from tests.report_factory import make_report

if TYPE_CHECKING:
    from tests.k8s_fixtures import K8sApi, OperatorFactory

pytest_plugins = ["tests.k8s_fixtures"]

HANDLERS = Path(__file__).resolve().parent.parent / "operator" / "helios_operator" / "k8s" / "handlers.py"
NAME = "demo"


def heliosdeployment(**monitoring: Any) -> dict[str, Any]:
    return {
        "apiVersion": "helios.dev/v1alpha1",
        "kind": "HeliosDeployment",
        "metadata": {"name": NAME, "namespace": "default"},
        "spec": {
            "candidates": [{"name": "alpha", "model": "test/alpha"}, {"name": "beta", "model": "test/beta"}],
            "accuracy": {"minAgreement": 0.9},
            "evaluation": {"prompts": {"inline": ["Hello", "Why is the sky blue?"]}},
            "monitoring": {
                "interval": "400ms",
                "staleAfter": "1500ms",
                "cooldown": 0,
                "breachWindowTokens": 20,
                "maxBreaches": 5,
                **monitoring,
            },
            "worker": {"resources": {"limits": {"nvidia.com/gpu": 1}}},
        },
    }


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := condition():
                return result
        except (AssertionError, KeyError, IndexError, TypeError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def fakes() -> Iterator[FakeWorkers]:
    workers = FakeWorkers()
    try:
        yield workers
    finally:
        workers.stop()


@pytest.fixture
def operator(k8s_api: K8sApi, helios_operator: OperatorFactory, monkeypatch: pytest.MonkeyPatch) -> OperatorFactory:
    """The operator as the chart's ServiceAccount: the emulator enforces the chart's RBAC (403 otherwise)."""
    monkeypatch.setenv("HELIOS_OPERATOR_TICK", "0.3")
    monkeypatch.setenv("HELIOS_OPERATOR_EVALUATION_POLL", "0.3")
    monkeypatch.setenv("HELIOS_OPERATOR_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("HELIOS_OPERATOR_ENDPOINT_ANNOTATION", "1")
    for text in crd_files().values():
        k8s_api.apply(text)
    return helios_operator


def hd_status(k8s_api: K8sApi) -> dict[str, Any]:
    return k8s_api.kubectl_json("get", "hd", NAME).get("status", {})


def names(k8s_api: K8sApi, *target: str) -> list[str]:
    return sorted(item["metadata"]["name"] for item in k8s_api.kubectl_json("get", *target)["items"])


def env_of(k8s_api: K8sApi, kind: str, name: str) -> dict[str, str]:
    """The container's env as a kubelet would resolve it now (ConfigMap references included)."""
    body = k8s_api.kubectl_json("get", kind, name)
    spec = body["spec"]["template"]["spec"] if kind == "deployment" else body["spec"]
    env = {}
    for var in spec["containers"][0]["env"]:
        if ref := var.get("valueFrom", {}).get("configMapKeyRef"):
            env[var["name"]] = k8s_api.kubectl_json("get", "configmap", ref["name"])["data"][ref["key"]]
        elif "valueFrom" not in var:
            env[var["name"]] = var.get("value", "")
    return env


def play_kubelet(k8s_api: K8sApi, pod: str, worker: FakeWorker) -> None:
    """Mark the pod Running and Ready, reachable at the fake worker's URL."""
    # A fake worker answers both APIs on one port.
    annotations = [f"helios.dev/endpoint={worker.url}", f"helios.dev/control-endpoint={worker.url}"]
    k8s_api.kubectl("annotate", "pod", pod, *annotations, "--overwrite")
    status = {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
    k8s_api.kubectl("patch", "pod", pod, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))


def start_serving_pod(k8s_api: K8sApi, fakes: FakeWorkers, pod: str) -> FakeWorker:
    """Play the ReplicaSet controller: a pod from the Deployment's template, served by a fake worker."""
    deployment = k8s_api.kubectl_json("get", "deployment", NAME)
    env = env_of(k8s_api, "deployment", NAME)
    worker = fakes.start(model=env["HELIOS_MODEL_NAME"], layers=int(env["HELIOS_LAYERS"]), layers_total=8)
    template = deployment["spec"]["template"]
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME, "uid": deployment["metadata"]["uid"]}
    metadata = {"name": pod, **template["metadata"], "ownerReferences": [owner]}
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata}
    k8s_api.apply(json.dumps({**manifest, "spec": template["spec"]}))
    play_kubelet(k8s_api, pod, worker)
    return worker


def evaluate(k8s_api: K8sApi, fakes: FakeWorkers, round_: int = 1) -> None:
    """Serve canned reports from the round's evaluation pods: alpha exits early, beta is slow."""
    reports = {
        "alpha": make_report("alpha", tokens_per_second=200.0),
        "beta": make_report("beta", exit_histogram=(5, 5, 10, 10, 20, 20, 15, 15), tokens_per_second=80.0),
    }
    for candidate, report in reports.items():
        pod = f"{NAME}-eval-{round_}-{candidate}"
        play_kubelet(k8s_api, pod, fakes.start(reports=[report]))


def wait_for_eval_pods(k8s_api: K8sApi, round_: int = 1) -> None:
    wanted = [f"{NAME}-eval-{round_}-alpha", f"{NAME}-eval-{round_}-beta"]
    wait_for(lambda: names(k8s_api, "pods", "-l", f"helios.dev/round={round_}") == wanted, "evaluation pods")


def wait_for_phase(k8s_api: K8sApi, *phases: str, timeout: float = 20.0) -> dict[str, Any]:
    return wait_for(lambda: (s := hd_status(k8s_api)).get("phase") in phases and s, f"phase {phases}", timeout)


@pytest.mark.timeout(90)
def test_evaluate_serve_adapt_degrade_and_delete(
    k8s_api: K8sApi, operator: OperatorFactory, fakes: FakeWorkers
) -> None:
    with operator(HANDLERS, namespace="default") as runner:
        k8s_api.apply(yaml.safe_dump(heliosdeployment()))
        wait_for_eval_pods(k8s_api)
        pod = k8s_api.kubectl_json("get", "pod", f"{NAME}-eval-1-alpha")
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "HeliosDeployment"
        assert env_of(k8s_api, "pod", f"{NAME}-eval-1-alpha")["HELIOS_MODE"] == "evaluate"
        assert hd_status(k8s_api)["phase"] == "Evaluating"

        evaluate(k8s_api, fakes)
        status = wait_for_phase(k8s_api, "Serving")
        assert status["currentModel"] == "alpha" and status["lastDecision"]["kind"] == "select"
        chosen = status["currentLayers"]
        env = env_of(k8s_api, "deployment", NAME)
        assert env["HELIOS_MODEL"] == "test/alpha" and env["HELIOS_LAYERS"] == str(chosen)
        container = k8s_api.kubectl_json("get", "deployment", NAME)["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert names(k8s_api, "service") == [NAME]
        wait_for(lambda: not names(k8s_api, "pods", "-l", "helios.dev/role=evaluate"), "evaluation pods to go")

        worker = start_serving_pod(k8s_api, fakes, f"{NAME}-w1")
        wait_for(lambda: hd_status(k8s_api)["readyReplicas"] == 1, "a ready replica")
        wait_for(lambda: k8s_api.kubectl_json("get", "heliosstatus", NAME)["status"]["telemetry"], "a first scrape")
        wait_for(
            lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in hd_status(k8s_api)["conditions"]),
            "Ready",
        )

        # A breach storm: 15 of 20 tokens reached the last layer unconfident.
        template_before = k8s_api.kubectl_json("get", "deployment", NAME)["spec"]["template"]
        worker.generate(tokens=20, breaches=15)
        decision = wait_for(
            lambda: (d := hd_status(k8s_api)["lastDecision"])["kind"] in ("add_layers", "switch_model") and d,
            "the storm's decision",
        )
        assert "breach storm" in decision["reason"]
        env = env_of(k8s_api, "deployment", NAME)
        secret = k8s_api.kubectl_json("get", "secret", f"{NAME}-control")
        token = base64.b64decode(secret["data"]["token"]).decode()
        assert len(token) >= 32 and secret["metadata"]["ownerReferences"][0]["kind"] == "HeliosDeployment"
        container = k8s_api.kubectl_json("get", "deployment", NAME)["spec"]["template"]["spec"]["containers"][0]
        [ref] = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "HELIOS_CONTROL_TOKEN"]
        assert ref == {"name": f"{NAME}-control", "key": "token"}
        if decision["kind"] == "add_layers":
            assert worker.posted_layers == [decision["layers"]] and decision["layers"] > chosen
            assert worker.control_auth == {f"Bearer {token}"}  # the operator sends the control token
            assert env["HELIOS_LAYERS"] == str(decision["layers"])
            # in place: the template is unchanged, so no pod rolls
            assert k8s_api.kubectl_json("get", "deployment", NAME)["spec"]["template"] == template_before
        else:
            assert env["HELIOS_MODEL_NAME"] == decision["model"] != "alpha"
        report = k8s_api.kubectl_json("get", "heliosstatus", NAME)["status"]
        assert report["lastDecision"]["reason"] == decision["reason"]
        assert [row["name"] for row in report["candidates"]] == ["alpha", "beta"]
        selector = ("--field-selector", f"involvedObject.name={NAME}")
        reasons = wait_for(
            lambda: {e["reason"] for e in k8s_api.kubectl_json("get", "events", *selector)["items"]} or None,
            "decision events",
        )
        assert "Selected" in reasons and {"AddLayers", "SwitchModel"} & reasons

        # Metrics go away: the operator holds the last decision and says so.
        worker.is_metrics_down = True
        status = wait_for_phase(k8s_api, "Degraded")
        fresh = next(c for c in status["conditions"] if c["type"] == "TelemetryFresh")
        assert fresh["status"] == "False" and fresh["reason"] == "TelemetryMissing"
        assert status["lastDecision"]["kind"] == "hold" and "keeping" in status["lastDecision"]["reason"]
        assert status["currentModel"] == decision["model"] and status["currentLayers"] == decision["layers"]
        assert status["targetModel"] == decision["model"] and status["targetLayers"] == decision["layers"]
        progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
        assert progressing["status"] == "True" and progressing["reason"] == "NewReplicaSetAvailable"

        # Printer columns.
        table = k8s_api.kubectl("get", "hd").stdout.splitlines()
        assert table[0].split() == ["NAME", "MODEL", "LAYERS", "PHASE", "READY", "REPLICAS", "AGE"]
        assert table[1].split()[:6] == [NAME, decision["model"], f"{decision['layers']}/8", "Degraded", "False", "1"]
        wide = k8s_api.kubectl("get", "hd", "-o", "wide").stdout.splitlines()[0]
        assert "OBJECTIVE" in wide and "BREACH RATE" in wide and "TOKENS/S" in wide
        header = k8s_api.kubectl("get", "heliosstatus").stdout.splitlines()[0]
        assert header.split()[:4] == ["NAME", "DEPLOYMENT", "MODEL", "LAYERS"] and "LAST DECISION" in header

        # The scale subresource reaches the Deployment.
        k8s_api.kubectl("scale", "hd", NAME, "--replicas=2")
        wait_for(lambda: k8s_api.kubectl_json("get", "deployment", NAME)["spec"]["replicas"] == 2, "scaled")
        time.sleep(3.0)  # several passes: the scaled count is honoured, not reverted
        assert k8s_api.kubectl_json("get", "deployment", NAME)["spec"]["replicas"] == 2
        assert k8s_api.kubectl_json("get", "hd", NAME)["spec"]["replicas"] == 2
        wait_for(lambda: names(k8s_api, "poddisruptionbudgets") == [NAME], "a PDB once replicas > 1")
        template = k8s_api.kubectl_json("get", "deployment", NAME)["spec"]["template"]["spec"]
        assert template["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
        assert template["terminationGracePeriodSeconds"] == 10 + 30 + 10

        k8s_api.kubectl("delete", "hd", NAME, timeout=30)
        for kind in ("deployment", "service", "heliosstatus", "configmap", "pods"):
            wait_for(lambda kind=kind: not names(k8s_api, kind), f"{kind} to be collected")
    assert runner.exception is None


@pytest.mark.timeout(90)
def test_deleted_and_edited_children_are_repaired_by_the_watch(
    k8s_api: K8sApi, operator: OperatorFactory, fakes: FakeWorkers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A minute between passes: whatever is repaired within seconds was repaired by the watch.
    monkeypatch.setenv("HELIOS_OPERATOR_TICK", "60")
    with operator(HANDLERS, namespace="default") as runner:
        k8s_api.apply(yaml.safe_dump(heliosdeployment()))
        wait_for_eval_pods(k8s_api)
        evaluate(k8s_api, fakes)
        wait_for_phase(k8s_api, "Serving")
        wait_for(lambda: names(k8s_api, "deployment") == [NAME] and names(k8s_api, "service") == [NAME], "children")
        template = k8s_api.kubectl_json("get", "deployment", NAME)["spec"]["template"]

        k8s_api.kubectl("delete", "deployment", NAME)
        wait_for(lambda: names(k8s_api, "deployment") == [NAME], "the Deployment to be recreated", timeout=10)
        k8s_api.kubectl("delete", "service", NAME)
        wait_for(lambda: names(k8s_api, "service") == [NAME], "the Service to be recreated", timeout=10)

        # A hand edit of a field HELIOS owns: the worker image and the layer count.
        edit = {"spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "evil:latest"}]}}}}
        k8s_api.kubectl("patch", "deployment", NAME, "--type=strategic", "-p", json.dumps(edit))
        wait_for(
            lambda: (
                k8s_api.kubectl_json("get", "deployment", NAME)["spec"]["template"]["spec"]["containers"][0]["image"]
                == template["spec"]["containers"][0]["image"]
            ),
            "the image edit to be reverted",
            timeout=10,
        )
        reasons = {e["reason"] for e in k8s_api.kubectl_json("get", "events")["items"]}
        assert "ChildRepaired" in reasons
        assert env_of(k8s_api, "deployment", NAME)["HELIOS_LAYERS"] == str(hd_status(k8s_api)["currentLayers"])
    assert runner.exception is None


def mark_pod_status(k8s_api: K8sApi, pod: str, status: dict[str, Any]) -> None:
    k8s_api.kubectl("patch", "pod", pod, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))


EVICTED = {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}
IMAGE_PULL = {
    "phase": "Pending",
    "containerStatuses": [
        {"name": "worker", "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no"}}}
    ],
}
CRASH_LOOP = {
    "phase": "Running",
    "containerStatuses": [
        {
            "name": "worker",
            "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
        }
    ],
}
UNSCHEDULABLE = {
    "phase": "Pending",
    "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes have a GPU"}
    ],
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (EVICTED, "pod Evicted: The node was low on resource: memory."),
        (IMAGE_PULL, "container worker: ImagePullBackOff"),
        (CRASH_LOOP, "CrashLoopBackOff after 4 restarts (last: OOMKilled)"),
        (UNSCHEDULABLE, "no report within 3s (unschedulable: 0/3 nodes have a GPU)"),
        ("model not found", "the worker reported: model not found"),
    ],
    ids=["evicted", "image-pull", "crash-loop", "unschedulable-past-deadline", "worker-failed"],
)
def test_a_broken_candidate_is_dropped_and_the_good_one_serves(
    k8s_api: K8sApi, operator: OperatorFactory, fakes: FakeWorkers, broken: Any, expected: str
) -> None:
    manifest = heliosdeployment()
    manifest["spec"]["evaluation"]["timeout"] = "3s"
    with operator(HANDLERS, namespace="default") as runner:
        k8s_api.apply(yaml.safe_dump(manifest))
        wait_for_eval_pods(k8s_api)
        play_kubelet(k8s_api, f"{NAME}-eval-1-alpha", fakes.start(reports=[make_report("alpha")]))
        if isinstance(broken, str):
            play_kubelet(k8s_api, f"{NAME}-eval-1-beta", fakes.start(evaluation_failure=broken))
        else:
            mark_pod_status(k8s_api, f"{NAME}-eval-1-beta", broken)
        status = wait_for_phase(k8s_api, "Serving")
        assert status["currentModel"] == "alpha"
        [failure] = status["failedCandidates"]
        assert failure["name"] == "beta" and expected in failure["reason"], failure
        report = k8s_api.kubectl_json("get", "heliosstatus", NAME)["status"]
        assert report["failedCandidates"][0]["reason"] == failure["reason"]
        events = k8s_api.kubectl_json("get", "events")["items"]
        assert any(e["reason"] == "CandidateFailed" and "beta" in e["message"] for e in events)
    assert runner.exception is None


@pytest.mark.timeout(60)
def test_every_candidate_failing_is_a_condition_naming_each_cause(
    k8s_api: K8sApi, operator: OperatorFactory, fakes: FakeWorkers
) -> None:
    with operator(HANDLERS, namespace="default") as runner:
        k8s_api.apply(yaml.safe_dump(heliosdeployment()))
        wait_for_eval_pods(k8s_api)
        mark_pod_status(k8s_api, f"{NAME}-eval-1-alpha", EVICTED)
        mark_pod_status(k8s_api, f"{NAME}-eval-1-beta", IMAGE_PULL)
        status = wait_for_phase(k8s_api, "Failed")
        evaluated = next(c for c in status["conditions"] if c["type"] == "Evaluated")
        assert evaluated["reason"] == "AllCandidatesFailed"
        assert (
            "alpha: pod Evicted" in evaluated["message"]
            and "beta: container worker: ImagePullBackOff" in (evaluated["message"])
        )
    assert runner.exception is None


@pytest.mark.timeout(60)
def test_pod_changes_and_spec_edits_are_acted_on_between_ticks(
    k8s_api: K8sApi, operator: OperatorFactory, fakes: FakeWorkers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A minute between passes: whatever happens within seconds was woken by a watch.
    monkeypatch.setenv("HELIOS_OPERATOR_TICK", "60")
    monkeypatch.setenv("HELIOS_OPERATOR_EVALUATION_POLL", "60")
    with operator(HANDLERS, namespace="default") as runner:
        k8s_api.apply(yaml.safe_dump(heliosdeployment()))
        wait_for_eval_pods(k8s_api)
        time.sleep(2.0)  # the passes the pods' creation woke are over
        mark_pod_status(k8s_api, f"{NAME}-eval-1-alpha", EVICTED)  # a pod event
        failed = wait_for(lambda: hd_status(k8s_api)["failedCandidates"], "the evicted candidate", timeout=12)
        assert [f["name"] for f in failed] == ["alpha"]
        old_uid = k8s_api.kubectl_json("get", "pod", f"{NAME}-eval-1-beta")["metadata"]["uid"]
        patch = {"spec": {"worker": {"image": "example.com/helios-worker:fixed"}}}
        k8s_api.kubectl("patch", "hd", NAME, "--type=merge", "-p", json.dumps(patch))  # a spec edit

        def replaced() -> bool:
            pod = k8s_api.kubectl_json("get", "pod", f"{NAME}-eval-1-beta")
            return pod["metadata"]["uid"] != old_uid and pod["spec"]["containers"][0]["image"].endswith(":fixed")

        wait_for(replaced, "the evaluation pod to be replaced with the new image", timeout=15)
    assert runner.exception is None


@pytest.mark.timeout(60)
def test_an_evaluation_pod_is_replaced_when_its_spec_changes(
    k8s_api: K8sApi, operator: OperatorFactory, fakes: FakeWorkers
) -> None:
    with operator(HANDLERS, namespace="default") as runner:
        k8s_api.apply(yaml.safe_dump(heliosdeployment()))
        wait_for_eval_pods(k8s_api)
        old_uid = k8s_api.kubectl_json("get", "pod", f"{NAME}-eval-1-beta")["metadata"]["uid"]
        patch = {"spec": {"worker": {"image": "example.com/helios-worker:fixed"}}}
        k8s_api.kubectl("patch", "hd", NAME, "--type=merge", "-p", json.dumps(patch))

        def replaced() -> bool:
            pod = k8s_api.kubectl_json("get", "pod", f"{NAME}-eval-1-beta")
            return pod["metadata"]["uid"] != old_uid and pod["spec"]["containers"][0]["image"].endswith(":fixed")

        wait_for(replaced, "the evaluation pod to be replaced with the new image")
        assert hd_status(k8s_api)["evaluationRound"] == 1  # the same round, not a new one
    assert runner.exception is None


@pytest.mark.timeout(60)
def test_editing_the_objective_reselects_without_a_new_evaluation(
    k8s_api: K8sApi, operator: OperatorFactory, fakes: FakeWorkers
) -> None:
    with operator(HANDLERS, namespace="default") as runner:
        k8s_api.apply(yaml.safe_dump(heliosdeployment()))
        wait_for_eval_pods(k8s_api)
        evaluate(k8s_api, fakes)
        first = wait_for_phase(k8s_api, "Serving")
        assert first["observedGeneration"] == 1
        k8s_api.kubectl("patch", "hd", NAME, "--type=merge", "-p", json.dumps({"spec": {"objective": "latency"}}))
        decision = wait_for(
            lambda: next(
                (
                    d
                    for d in hd_status(k8s_api)["decisionHistory"]
                    if d["reason"].startswith("spec changed (objective)")
                ),
                None,
            ),
            "a decision for the new objective",
        )
        assert decision["kind"] == "select" and "lowest time per token" in decision["reason"]
        status = wait_for(lambda: (s := hd_status(k8s_api))["observedGeneration"] == 2 and s, "generation 2 acted on")
        assert status["evaluationRound"] == 1 and not status.get("evaluationPending")
        assert not names(k8s_api, "pods", "-l", "helios.dev/role=evaluate")

        # What evaluation measures changed: a new round, while the current model keeps serving.
        patch = {"spec": {"evaluation": {"maxNewTokens": 16}}}
        k8s_api.kubectl("patch", "hd", NAME, "--type=merge", "-p", json.dumps(patch))
        # (one candidate pod at a time while serving)
        wait_for(lambda: names(k8s_api, "pods", "-l", "helios.dev/round=2") == [f"{NAME}-eval-2-alpha"], "round 2")
        assert hd_status(k8s_api)["currentModel"] == "alpha"  # still served while round 2 runs
    assert runner.exception is None


@pytest.mark.timeout(90)
def test_restart_mid_evaluation_converges_without_duplicates(
    k8s_api: K8sApi, operator: OperatorFactory, fakes: FakeWorkers
) -> None:
    with operator(HANDLERS, namespace="default"):
        k8s_api.apply(yaml.safe_dump(heliosdeployment()))
        wait_for_eval_pods(k8s_api)
    # The operator is gone; the evaluation finishes meanwhile.
    evaluate(k8s_api, fakes)
    with operator(HANDLERS, namespace="default") as runner:
        status = wait_for_phase(k8s_api, "Serving")
        assert status["evaluationRound"] == 1
        start_serving_pod(k8s_api, fakes, f"{NAME}-w1")
        wait_for(lambda: k8s_api.kubectl_json("get", "heliosstatus", NAME)["status"].get("telemetry"), "a scrape")
    history = hd_status(k8s_api)["decisionHistory"]
    scraped_at = k8s_api.kubectl_json("get", "heliosstatus", NAME)["status"]["telemetry"]["observedAt"]
    with operator(HANDLERS, namespace="default") as second:
        wait_for(
            lambda: (
                k8s_api.kubectl_json("get", "heliosstatus", NAME)["status"]["telemetry"]["observedAt"] != scraped_at
            ),
            "the restarted operator to scrape",
        )
        status = hd_status(k8s_api)
        assert status["phase"] == "Serving" and status["evaluationRound"] == 1
        assert status["decisionHistory"] == history  # resumed from status: no new selection
    assert names(k8s_api, "deployment") == [NAME] and names(k8s_api, "service") == [NAME]
    assert names(k8s_api, "heliosstatus") == [NAME] and names(k8s_api, "pods") == [f"{NAME}-w1"]
    assert runner.exception is None and second.exception is None


@pytest.mark.timeout(90)
def test_a_restart_mid_storm_keeps_the_breach_window_and_cooldown(
    k8s_api: K8sApi, operator: OperatorFactory, fakes: FakeWorkers
) -> None:
    def scraped_at() -> str:
        return k8s_api.kubectl_json("get", "heliosstatus", NAME)["status"]["telemetry"]["observedAt"]

    with operator(HANDLERS, namespace="default"):
        k8s_api.apply(yaml.safe_dump(heliosdeployment()))
        wait_for_eval_pods(k8s_api)
        evaluate(k8s_api, fakes)
        wait_for_phase(k8s_api, "Serving")
        worker = start_serving_pod(k8s_api, fakes, f"{NAME}-w1")
        wait_for(scraped_at, "a first scrape")
        worker.generate(tokens=10, breaches=4)  # 4 of at most 5 breaches in a 20-token window: no storm yet
        kept = wait_for(
            lambda: (p := hd_status(k8s_api).get("policyState")) and p["breaches"]["hits"] == 4 and p,
            "the window in status",
        )
    history = hd_status(k8s_api)["decisionHistory"]
    with operator(HANDLERS, namespace="default") as runner:
        before = scraped_at()
        wait_for(lambda: scraped_at() != before, "the restarted operator to scrape")
        restored = hd_status(k8s_api)["policyState"]
        assert restored["lastChangeAt"] == kept["lastChangeAt"]  # the cooldown runs from the same change
        assert restored["breaches"]["hits"] == 4 and hd_status(k8s_api)["decisionHistory"] == history
        worker.generate(tokens=5, breaches=2)  # 6 breaches in the kept window: a storm only if it was kept
        decision = wait_for(
            lambda: (d := hd_status(k8s_api)["lastDecision"])["kind"] in ("add_layers", "switch_model") and d,
            "the storm's decision",
        )
        assert "6 breaches in the last 15 tokens" in decision["reason"]
    assert runner.exception is None


@pytest.mark.timeout(90)
def test_a_round_whose_status_patch_was_lost_is_not_run_again(
    k8s_api: K8sApi, operator: OperatorFactory, fakes: FakeWorkers
) -> None:
    with operator(HANDLERS, namespace="default"):
        k8s_api.apply(yaml.safe_dump(heliosdeployment()))
        wait_for_eval_pods(k8s_api)
        evaluate(k8s_api, fakes)
        wait_for_phase(k8s_api, "Serving")
        wait_for(lambda: not names(k8s_api, "pods", "-l", "helios.dev/role=evaluate"), "evaluation pods to go")
    # The operator stopped after storing round 1's reports and deleting its pods, before the status
    # said so: the status still reads "round 1 pending".
    lost = {
        "phase": "Evaluating",
        "evaluationPending": True,
        "currentModel": None,
        "currentLayers": None,
        "lastDecision": None,
        "decisionHistory": [],
        "policyState": None,
    }
    k8s_api.kubectl("patch", "hd", NAME, "--subresource=status", "--type=merge", "-p", json.dumps({"status": lost}))
    with operator(HANDLERS, namespace="default") as runner:
        status = wait_for_phase(k8s_api, "Serving")
        assert status["evaluationRound"] == 1 and status["currentModel"] == "alpha"
        assert "finished before the operator restarted" in next(
            c["message"] for c in status["conditions"] if c["type"] == "Evaluated"
        )
        time.sleep(1.0)  # a few passes: none may start round 1's pods again
        assert not names(k8s_api, "pods", "-l", "helios.dev/role=evaluate")
    assert runner.exception is None


@pytest.mark.timeout(60)
def test_invalid_spec_sets_condition_and_operator_keeps_running(k8s_api: K8sApi, operator: OperatorFactory) -> None:
    # What the CRD can check, admission refuses (maxBreaches > breachWindowTokens never reaches the
    # operator); a podTemplate is kept as given, so a sidecar named like HELIOS's worker gets through.
    refused = heliosdeployment(maxBreaches=50)  # > breachWindowTokens (20)
    assert "maxBreaches must be <= breachWindowTokens" in k8s_api.apply_error(yaml.safe_dump(refused))
    manifest = heliosdeployment()
    manifest["spec"]["worker"]["podTemplate"] = {"spec": {"containers": [{"name": "worker", "image": "busybox:1"}]}}
    with operator(HANDLERS, namespace="default") as runner:
        k8s_api.apply(yaml.safe_dump(manifest))
        status = wait_for_phase(k8s_api, "Invalid")
        valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
        assert valid["status"] == "False" and "spec.worker" not in valid["message"]
        assert "worker.podTemplate.spec.containers[0].name: 'worker' is the name of HELIOS's" in valid["message"]
        assert not names(k8s_api, "pods")

        patch = {"spec": {"worker": {"podTemplate": None}}}
        k8s_api.kubectl("patch", "hd", NAME, "--type=merge", "-p", json.dumps(patch))
        wait_for_phase(k8s_api, "Evaluating")
        wait_for_eval_pods(k8s_api)
    assert runner.exception is None and "invalid spec" in runner.output


POD_TEMPLATE = {
    "metadata": {"labels": {"team": "ml"}},
    "spec": {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "registry-cred"}],
        "runtimeClassName": "nvidia",
        "priorityClassName": "llm-serving",
        "containers": [{"name": "log-shipper", "image": "fluent/fluent-bit:3.2", "args": ["--quiet"]}],
    },
}


def assert_carries_pod_template(pod: dict[str, Any]) -> None:
    spec, overlay = pod["spec"], POD_TEMPLATE["spec"]
    assert pod["metadata"]["labels"]["team"] == "ml"
    for key in ("nodeSelector", "imagePullSecrets", "runtimeClassName", "priorityClassName"):
        assert spec[key] == overlay[key], key
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu" and spec["tolerations"][1:] == overlay["tolerations"]
    assert [c["name"] for c in spec["containers"]] == ["worker", "log-shipper"]
    assert spec["containers"][1] == overlay["containers"][0]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in spec["containers"][0]["volumeMounts"]


@pytest.mark.timeout(90)
def test_pod_template_reaches_evaluation_pods_and_the_deployment(
    k8s_api: K8sApi, operator: OperatorFactory, fakes: FakeWorkers
) -> None:
    manifest = heliosdeployment()
    manifest["spec"]["worker"]["podTemplate"] = POD_TEMPLATE  # admitted by the CRD schema, as a server would
    with operator(HANDLERS, namespace="default") as runner:
        k8s_api.apply(yaml.safe_dump(manifest))
        wait_for_eval_pods(k8s_api)
        for candidate in ("alpha", "beta"):
            assert_carries_pod_template(k8s_api.kubectl_json("get", "pod", f"{NAME}-eval-1-{candidate}"))
        evaluate(k8s_api, fakes)
        wait_for_phase(k8s_api, "Serving")
        assert_carries_pod_template(k8s_api.kubectl_json("get", "deployment", NAME)["spec"]["template"])
    assert runner.exception is None


@pytest.mark.timeout(90)
def test_a_reassessment_runs_one_candidate_pod_at_a_time_with_evaluation_resources(
    k8s_api: K8sApi, operator: OperatorFactory, fakes: FakeWorkers
) -> None:
    manifest = heliosdeployment()
    manifest["spec"]["evaluation"] |= {
        "reassessEveryRequests": 10,
        "minReassessInterval": 0,
        "resources": {"limits": {"cpu": "2", "memory": "8Gi"}},
    }
    with operator(HANDLERS, namespace="default") as runner:
        k8s_api.apply(yaml.safe_dump(manifest))
        wait_for_eval_pods(k8s_api)
        first = k8s_api.kubectl_json("get", "pod", f"{NAME}-eval-1-alpha")["spec"]["containers"][0]
        assert first["resources"] == {"limits": {"cpu": "2", "memory": "8Gi"}}  # not the serving GPU
        evaluate(k8s_api, fakes)
        wait_for_phase(k8s_api, "Serving")
        worker = start_serving_pod(k8s_api, fakes, f"{NAME}-w1")
        wait_for(lambda: hd_status(k8s_api)["readyReplicas"] == 1, "a ready replica")
        # A pod's first scrape is its baseline: requests made before it are never counted.
        wait_for(lambda: k8s_api.kubectl_json("get", "heliosstatus", NAME)["status"]["telemetry"], "a first scrape")
        worker.generate(tokens=20, breaches=0, requests=12)
        wait_for(lambda: names(k8s_api, "pods", "-l", "helios.dev/round=2") == [f"{NAME}-eval-2-alpha"], "alpha")
        time.sleep(1.0)  # a few passes: beta waits for alpha
        assert names(k8s_api, "pods", "-l", "helios.dev/round=2") == [f"{NAME}-eval-2-alpha"]

        play_kubelet(k8s_api, f"{NAME}-eval-2-alpha", fakes.start(reports=[make_report("alpha")]))
        wait_for(lambda: names(k8s_api, "pods", "-l", "helios.dev/round=2") == [f"{NAME}-eval-2-beta"], "beta next")
        play_kubelet(k8s_api, f"{NAME}-eval-2-beta", fakes.start(reports=[make_report("beta", tokens_per_second=1.0)]))
        wait_for(lambda: not hd_status(k8s_api)["evaluationPending"], "round 2 to finish")
        assert hd_status(k8s_api)["evaluationRound"] == 2 and hd_status(k8s_api)["currentModel"] == "alpha"
        assert not names(k8s_api, "pods", "-l", "helios.dev/role=evaluate")
    assert runner.exception is None
