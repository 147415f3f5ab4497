"""Calibrated exits in the loop (issue 11): spec.candidates[].exits and .calibrate, as the API server
admits them, and the pods HELIOS builds from them (pure: no cluster).

``exits`` names a sidecar like a model reference; ``calibrate`` has HELIOS run a calibration Job
first. Either way the candidate's evaluation pod gets the path in its HELIOS_EVAL_CANDIDATES entry
and its serving pods get HELIOS_EXITS, with the claim that holds it mounted read-only; a switch to a
candidate without exits drops both.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from helios_operator.crds import helios_deployment_crd
from helios_operator.k8s import manifests
from helios_operator.spec import HeliosDeploymentSpec
from tests.k8s_admission import CustomResourceSchema, Rejected

OWNER = {
    "apiVersion": "helios.dev/v1alpha1",
    "kind": "HeliosDeployment",
    "metadata": {"name": "demo", "namespace": "ml", "uid": "u-1"},
}
TEXTS = {"configMapRef": {"name": "calibration-text", "key": "texts.txt"}}


def admit(spec: dict[str, Any]) -> dict[str, Any]:
    """The HeliosDeployment as the API server stores it (schema, defaults, CEL), or Rejected."""
    root = helios_deployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema = CustomResourceSchema(root, "helios.dev", "v1alpha1", "HeliosDeployment")
    body = {"apiVersion": "helios.dev/v1alpha1", "kind": "HeliosDeployment", "metadata": {"name": "demo"}}
    stored, warnings = schema.admit({**body, "spec": spec}, field_validation="Strict")
    assert not warnings
    return stored


def both_ways(spec: dict[str, Any], words: str) -> None:
    """Rejected by the API server (CRD) and by pydantic (helios run, the operator's Invalid condition)."""
    with pytest.raises(Rejected, match=words):
        admit(spec)
    with pytest.raises(ValidationError):
        HeliosDeploymentSpec.model_validate(spec)


def make_spec(*candidates: dict[str, Any], **fields: Any) -> HeliosDeploymentSpec:
    return HeliosDeploymentSpec.model_validate({"candidates": list(candidates), **fields})


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    kind = manifest["kind"]
    spec = manifest["spec"]["template"]["spec"] if kind in ("Deployment", "Job") else manifest["spec"]
    return spec["containers"][0]


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"] if manifest["kind"] in ("Deployment", "Job") else manifest["spec"]


def env(manifest: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(manifest)["env"]}


def mounts(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container(manifest)["volumeMounts"]}


def claims(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]
        for v in pod_spec(manifest)["volumes"]
        if "persistentVolumeClaim" in v
    }


# --- admission ---------------------------------------------------------------------------------


def test_exits_and_calibrate_are_admitted_with_defaults() -> None:
    spec = {
        "candidates": [
            {"name": "a", "model": "org/a", "exits": "pvc://sidecars/org-a"},
            {"name": "b", "model": "org/b", "exits": "exits/org-b"},
            {"name": "c", "model": "file:///m/c", "exits": "file:///sidecars/c"},
            {"name": "d", "model": "helios-ee-tiny", "calibrate": {"texts": TEXTS}},
            {"name": "e", "model": "helios-ee-tiny", "calibrate": {"texts": {"path": "texts"}, "exitLayers": "4,6"}},
        ]
    }
    stored = admit({**spec, "calibration": {"volume": {}}})["spec"]
    assert stored["candidates"][3]["calibrate"] == {"texts": TEXTS, "tokens": 20000, "exitLayers": "auto"}
    assert stored["calibration"] == {"volume": {"size": "1Gi", "accessModes": ["ReadWriteOnce"]}, "timeout": "30m"}
    parsed = HeliosDeploymentSpec.model_validate(stored)
    assert parsed.candidates[4].calibrate.exit_layers == "4,6"
    assert parsed.calibration.timeout == 1800.0


@pytest.mark.parametrize(
    ("candidate", "words"),
    [
        ({"exits": "hf://org/exits"}, r"exits"),  # a sidecar is never downloaded
        ({"exits": "pvc://claim-only"}, r"exits"),  # pvc://CLAIM/PATH needs the path
        ({"exits": "s3://bucket/x"}, r"exits"),
        ({"exits": "x", "calibrate": {"texts": {"path": "t"}}}, r"exits or calibrate"),
        ({"calibrate": {"texts": {}}}, r"configMapRef or path"),
        ({"calibrate": {"texts": {"path": "t", "configMapRef": {"name": "c"}}}}, r"configMapRef or path"),
        ({"calibrate": {"texts": {"configMapRef": {"name": "Not_A_Name"}}}}, r"name"),
        ({"calibrate": {"texts": {"path": "t"}, "tokens": 10}}, r"tokens"),
        ({"calibrate": {"texts": {"path": "t"}, "exitLayers": "0,3"}}, r"exitLayers"),
        ({"calibrate": {"texts": {"path": "t"}, "exitLayers": "some"}}, r"exitLayers"),
    ],
)
def test_bad_exits_and_calibrate_are_rejected(candidate: dict[str, Any], words: str) -> None:
    both_ways({"candidates": [{"name": "a", "model": "org/a", **candidate}]}, words)


def test_calibrated_exits_exclude_the_saturation_gate_and_bad_volumes() -> None:
    exits = {"name": "a", "model": "org/a", "exits": "x"}
    both_ways({"candidates": [exits], "exit": {"gate": "saturation"}}, r"saturation")
    admit({"candidates": [{"name": "a", "model": "org/a"}], "exit": {"gate": "saturation"}})
    both_ways({"candidates": [exits], "calibration": {"volume": {"accessModes": ["Sometimes"]}}}, r"accessModes")
    both_ways({"candidates": [exits], "calibration": {"volume": {"size": "lots"}}}, r"size")


# --- manifests ---------------------------------------------------------------------------------


def test_exits_reach_the_evaluation_pod_and_the_serving_pods_as_container_paths() -> None:
    spec = make_spec(
        {"name": "a", "model": "org/a", "exits": "pvc://sidecars/org-a"},
        {"name": "b", "model": "org/b", "exits": "exits/org-b"},
        {"name": "c", "model": "org/c", "exits": "file:///sidecars/c"},
    )
    expected = {"a": "/mnt/pvc/sidecars/org-a", "b": "/models/exits/org-b", "c": "/sidecars/c"}
    for candidate in spec.candidates:
        pod = manifests.build_evaluation_pod(OWNER, spec, candidate, 1, ["p"], "img")
        [listed] = json.loads(env(pod)["HELIOS_EVAL_CANDIDATES"])
        assert listed == {"name": candidate.name, "model": candidate.model, "exits": expected[candidate.name]}
        assert "HELIOS_EXITS" not in env(pod)  # the evaluation reads its candidate's entry
        serving = manifests.build_deployment(OWNER, spec, candidate, 2, "img")
        assert env(serving)["HELIOS_EXITS"] == expected[candidate.name]
    # The claim of a pvc:// sidecar is mounted read-only where the path points, in a's pods only.
    evaluation_a = manifests.build_evaluation_pod(OWNER, spec, spec.candidates[0], 1, ["p"], "img")
    serving_a = manifests.build_deployment(OWNER, spec, spec.candidates[0], 2, "img")
    for pod in (evaluation_a, serving_a):
        assert claims(pod)["sidecars"] == {"claimName": "sidecars", "readOnly": True}
        assert mounts(pod)["/mnt/pvc/sidecars"]["readOnly"] is True
    assert "sidecars" not in claims(manifests.build_deployment(OWNER, spec, spec.candidates[1], 2, "img"))


def test_a_sidecar_on_a_model_claim_is_not_mounted_twice() -> None:
    spec = make_spec({"name": "a", "model": "pvc://models/a", "exits": "pvc://models/a-exits"})
    pod = manifests.build_deployment(OWNER, spec, spec.candidates[0], 2, "img")
    assert [m["mountPath"] for m in container(pod)["volumeMounts"]].count("/mnt/pvc/models") == 1
    assert env(pod)["HELIOS_EXITS"] == "/mnt/pvc/models/a-exits"


def test_a_switch_to_a_candidate_without_exits_drops_them() -> None:
    spec = make_spec(
        {"name": "a", "model": "org/a", "exits": "pvc://sidecars/org-a"},
        {"name": "b", "model": "org/b", "calibrate": {"texts": TEXTS}},
        {"name": "plain", "model": "org/c"},
    )
    for candidate in spec.candidates[:2]:
        assert "HELIOS_EXITS" in env(manifests.build_deployment(OWNER, spec, candidate, 2, "img"))
    plain = manifests.build_deployment(OWNER, spec, spec.candidates[2], 2, "img")
    assert "HELIOS_EXITS" not in env(plain)
    assert set(claims(plain)) == set()  # neither the sidecar claim nor the calibration claim
    assert not any(path.startswith("/mnt/exits") or path.startswith("/mnt/pvc") for path in mounts(plain))
    [listed] = json.loads(
        env(manifests.build_evaluation_pod(OWNER, spec, spec.candidates[2], 1, ["p"], "i"))["HELIOS_EVAL_CANDIDATES"]
    )
    assert "exits" not in listed


def test_calibrated_candidates_read_their_sidecar_from_the_calibration_claim() -> None:
    spec = make_spec({"name": "b", "model": "org/b", "calibrate": {"texts": TEXTS}})
    candidate = spec.candidates[0]
    pod = manifests.build_evaluation_pod(OWNER, spec, candidate, 1, ["p"], "img")
    [listed] = json.loads(env(pod)["HELIOS_EVAL_CANDIDATES"])
    assert listed == {"name": "b", "model": "org/b", "exits": "/mnt/exits/b"}  # no calibrate: the worker's contract
    serving = manifests.build_deployment(OWNER, spec, candidate, 2, "img")
    assert env(serving)["HELIOS_EXITS"] == "/mnt/exits/b"
    for manifest in (pod, serving):
        assert claims(manifest)["demo-exits"] == {"claimName": "demo-exits", "readOnly": True}
        assert mounts(manifest)["/mnt/exits"]["readOnly"] is True


def test_the_calibration_claim_and_job() -> None:
    spec = make_spec(
        {"name": "b", "model": "org/b", "revision": "v2", "calibrate": {"texts": TEXTS, "tokens": 500}},
        {"name": "p", "model": "org/p", "calibrate": {"texts": {"path": "texts/en"}, "exitLayers": "2,4"}},
        calibration={"volume": {"size": "2Gi", "storageClassName": "fast", "accessModes": ["ReadWriteMany"]}},
        worker={
            "env": [{"name": "HELIOS_TORCH_THREADS", "value": "1"}],
            "podTemplate": {"spec": {"nodeSelector": {"pool": "cpu"}}},
        },
    )
    claim = manifests.build_exits_claim(OWNER, spec)
    assert claim["metadata"]["name"] == "demo-exits" and claim["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "2Gi"}},
        "storageClassName": "fast",
    }
    job = manifests.build_calibration_job(OWNER, spec, spec.candidates[0], "worker:1")
    assert job["apiVersion"] == "batch/v1" and job["metadata"]["name"] == "demo-calibrate-b"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "HeliosDeployment"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 1800
    worker = container(job)
    assert worker["image"] == "worker:1" and "readinessProbe" not in worker and "ports" not in worker
    command = worker["command"]
    assert command[:2] == ["helios-worker", "calibrate"]
    options = dict(zip(command[2::2], command[3::2], strict=True))
    assert options == {
        "--model": "org/b@v2",
        "--texts": "/etc/helios/calibration-texts/texts.txt",
        "--tokens": "500",
        "--exit-layers": "auto",
        "--out": "/mnt/exits/b",
        "--device": "cpu",
    }
    assert worker["terminationMessagePolicy"] == "FallbackToLogsOnError"
    template = job["spec"]["template"]
    assert template["spec"]["restartPolicy"] == "Never"
    assert template["spec"]["nodeSelector"] == {"pool": "cpu"}  # the podTemplate overlay applies
    assert template["metadata"]["labels"]["helios.dev/role"] == "calibrate"
    assert template["metadata"]["labels"]["helios.dev/candidate"] == "b"
    # It writes the calibration claim; the texts ConfigMap is optional so a missing one fails the Job.
    assert claims(job)["demo-exits"] == {"claimName": "demo-exits"}
    assert mounts(job)["/mnt/exits"].get("readOnly") is not True
    [texts] = [v for v in template["spec"]["volumes"] if "configMap" in v]
    assert texts["configMap"] == {"name": "calibration-text", "optional": True}
    assert env(job)["HELIOS_TORCH_THREADS"] == "1"
    on_volume = manifests.build_calibration_job(OWNER, spec, spec.candidates[1], "worker:1")
    command = container(on_volume)["command"]
    assert command[command.index("--texts") + 1] == "/models/texts/en"
    assert command[command.index("--exit-layers") + 1] == "2,4"
    assert not any("configMap" in v for v in pod_spec(on_volume)["volumes"])


# --- the calibration Job's life (k8s/calibration.py, against an in-memory API) ---------------------


class MemoryKube:
    """The few Kube calls calibration.ensure makes, on a dict; ``calls`` records the writes."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        self.calls: list[tuple[str, str, str]] = []

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, name))

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", manifest["kind"], manifest["metadata"]["name"]))
        self.objects[(manifest["kind"], manifest["metadata"]["name"])] = manifest
        return manifest

    def delete(self, kind: str, namespace: str, name: str, propagation: str | None = None) -> None:
        self.calls.append(("delete", kind, f"{name} ({propagation})"))
        self.objects.pop((kind, name), None)

    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        return [
            o
            for (k, _), o in self.objects.items()
            if k == kind and labels.items() <= (o["metadata"].get("labels") or {}).items()
        ]


def test_a_calibration_job_takes_calibration_resources_then_the_evaluation_pods():
    gpu = {"limits": {"nvidia.com/gpu": 1, "memory": "16Gi"}}
    cpu = {"limits": {"cpu": "4", "memory": "8Gi"}}
    calibrated = {"name": "b", "model": "org/b", "calibrate": {"texts": TEXTS}}

    def job_of(**fields: Any) -> dict[str, Any]:
        spec = make_spec(calibrated, worker={"resources": gpu}, **fields)
        return manifests.build_calibration_job(OWNER, spec, spec.candidates[0], "worker:1")

    def device(job: dict[str, Any]) -> str:
        command = container(job)["command"]
        return command[command.index("--device") + 1]

    # Its own resources first: a CPU Job although the serving and evaluation pods want a GPU.
    own = job_of(evaluation={"resources": gpu}, calibration={"resources": cpu})
    assert container(own)["resources"] == cpu and device(own) == "cpu" and "tolerations" not in pod_spec(own)
    # Else the evaluation pods': a CPU evaluation keeps the Job off the GPU the serving pods use.
    evaluation = job_of(evaluation={"resources": cpu})
    assert container(evaluation)["resources"] == cpu and device(evaluation) == "cpu"
    assert "tolerations" not in pod_spec(evaluation)
    # Else the worker's: a GPU Job, on CUDA, tolerating the GPU taint.
    worker = job_of()
    assert container(worker)["resources"] == {"limits": {"nvidia.com/gpu": "1", "memory": "16Gi"}}
    assert device(worker) == "cuda"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(worker)["tolerations"]


def calibration_context(kube: MemoryKube, spec: HeliosDeploymentSpec, status: dict[str, Any]) -> Any:
    from datetime import UTC, datetime

    from helios_operator.k8s.config import OperatorConfig
    from helios_operator.k8s.context import Context, Runtime

    return Context(OWNER, spec, status, Runtime(), kube, None, OperatorConfig(), datetime.now(UTC))  # type: ignore[arg-type]


def finish(kube: MemoryKube, name: str, condition: str, message: str = "") -> None:
    """The Job controller's verdict on Job ``name`` (and a pod that says why, for a failure)."""
    job = kube.objects[("Job", name)]
    job["status"] = {"conditions": [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded"}]}
    labels = job["spec"]["template"]["metadata"]["labels"]
    terminated = {"exitCode": 2, "message": message}
    status = {"phase": "Failed", "containerStatuses": [{"name": "worker", "state": {"terminated": terminated}}]}
    kube.objects[("Pod", name + "-x")] = {
        "kind": "Pod",
        "metadata": {"name": name + "-x", "labels": labels},
        "status": status,
    }


def test_a_calibration_job_runs_once_per_inputs_and_its_failure_says_why() -> None:
    import asyncio

    from helios_operator.k8s import calibration

    texts = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "calibration-text"},
        "data": {"texts.txt": "a"},
    }
    kube = MemoryKube(texts)
    spec = make_spec({"name": "b", "model": "org/b", "calibrate": {"texts": TEXTS}})
    status: dict[str, Any] = {}
    ctx = calibration_context(kube, spec, status)
    [candidate] = spec.candidates
    wanted = asyncio.run(calibration.inputs_hash(ctx, candidate))

    def step(round_: int = 1) -> calibration.Outcome:
        return asyncio.run(calibration.ensure(ctx, candidate, wanted, round_))

    assert step() == calibration.Outcome()  # claim and Job created, running
    assert kube.calls == [("create", "PersistentVolumeClaim", "demo-exits"), ("create", "Job", "demo-calibrate-b")]
    job = kube.objects[("Job", "demo-calibrate-b")]
    assert job["metadata"]["annotations"] == {"helios.dev/calibration-hash": wanted, "helios.dev/round": "1"}
    assert step() == calibration.Outcome() and len(kube.calls) == 2  # still running: nothing new
    finish(kube, "demo-calibrate-b", "Complete")
    assert step().is_done and status["calibrations"] == [{"name": "b", "specHash": wanted, "exits": "/mnt/exits/b"}]
    # Done for these inputs: not run again, even once the Job object is gone.
    del kube.objects[("Job", "demo-calibrate-b")]
    assert step(2).is_done and len(kube.calls) == 2
    # New text in the ConfigMap: new inputs, a new Job.
    texts["data"]["texts.txt"] = "b"
    wanted = asyncio.run(calibration.inputs_hash(ctx, candidate))
    assert step(2) == calibration.Outcome() and kube.calls[-1] == ("create", "Job", "demo-calibrate-b")
    finish(kube, "demo-calibrate-b", "Failed", "helios-worker: --texts ...: no .txt files there")
    failed = step(2)
    assert failed.failure is not None and not failed.is_done
    assert failed.failure.startswith("calibration Job demo-calibrate-b failed (BackoffLimitExceeded)")
    assert "exit status 2: helios-worker: --texts ...: no .txt files there" in failed.failure
    assert step(2) == failed  # failed for good in its round
    assert step(3) == calibration.Outcome()  # a later round replaces it
    assert kube.calls[-1] == ("delete", "Job", "demo-calibrate-b (Background)")


# --- the pod runner's Job controller and claims (e2e/pod_runner.py, pure parts) ----------------------


def test_the_pod_runner_shares_claim_directories_and_maps_paths_in_json_and_commands(tmp_path: Any) -> None:
    from e2e.pod_runner import container_env, map_path, mount_dirs

    spec = make_spec({"name": "b", "model": "org/b", "calibrate": {"texts": TEXTS}})
    job = manifests.build_calibration_job(OWNER, spec, spec.candidates[0], "img")
    evaluation = manifests.build_evaluation_pod(OWNER, spec, spec.candidates[0], 1, ["p"], "img")
    job_dirs = mount_dirs(job["spec"]["template"], tmp_path / "job-pod")
    evaluation_dirs = mount_dirs(evaluation, tmp_path / "eval-pod")
    assert job_dirs["/mnt/exits"] == evaluation_dirs["/mnt/exits"] == tmp_path / "_claims" / "demo-exits"
    assert job_dirs["/models"] == tmp_path / "job-pod" / "models"  # an emptyDir: the pod's own
    command = [map_path(arg, job_dirs) for arg in container(job)["command"]]
    assert command[command.index("--out") + 1] == str(tmp_path / "_claims/demo-exits/b")
    secrets = {"Secret/demo-control": {"token": "-"}}
    [listed] = json.loads(container_env(evaluation, tmp_path / "eval-pod", secrets.get)["HELIOS_EVAL_CANDIDATES"])
    assert listed["exits"] == str(tmp_path / "_claims/demo-exits/b") and listed["model"] == "org/b"


def test_the_pod_runner_job_controller_ends_jobs_as_their_pod_ends() -> None:
    from e2e.pod_runner import job_status

    job: dict[str, Any] = {"metadata": {"name": "j"}, "spec": {"activeDeadlineSeconds": 60}}
    started = job_status(job, [], now=1_000_000.0)
    assert started == {"active": 0, "startTime": "1970-01-12T13:46:40Z"}
    job["status"] = started
    assert job_status(job, [{"status": {"phase": "Running"}}], now=1_000_030.0) is None
    done = job_status(job, [{"status": {"phase": "Succeeded"}}], now=1_000_030.0)
    assert done["succeeded"] == 1 and done["conditions"][0]["type"] == "Complete"
    failed = job_status(job, [{"status": {"phase": "Failed"}}], now=1_000_030.0)
    assert failed["failed"] == 1 and failed["conditions"][0]["reason"] == "BackoffLimitExceeded"
    late = job_status(job, [{"status": {"phase": "Running"}}], now=1_000_061.0)
    assert late["conditions"][0] | {"lastProbeTime": "", "lastTransitionTime": ""} == {
        "type": "Failed",
        "status": "True",
        "reason": "DeadlineExceeded",
        "message": "Job was active longer than specified deadline",
        "lastProbeTime": "",
        "lastTransitionTime": "",
    }
    job["status"] = {**started, **done}
    assert job_status(job, [{"status": {"phase": "Succeeded"}}], now=1_000_090.0) is None  # finished: left alone
