"""Calibration Jobs against the API emulator with real processes (issue 11).

The operator runs as the chart's ServiceAccount (RBAC enforced) beside ``e2e.pod_runner``, which
plays kubelet and the Deployment and Job controllers: a calibration Job's pod runs
``helios-worker calibrate`` on the packaged helios-ee-tiny and a few hundred tokens of text from a
ConfigMap, and writes the sidecar to the calibration claim, a directory the runner shares between
every pod that mounts the claim. The test checks that the sidecar reaches the evaluation report
(``report.exits``) and the serving pod (HELIOS_EXITS, read from the same claim), that a second
candidate whose texts key does not exist fails alone with the Job's reason in
``status.failedCandidates`` while selection goes on. That a succeeded Job is not run again is
tests/test_calibrated_exits.py's (no processes needed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from e2e.pod_runner import CLAIMS_DIR, PodRunner
from helios_worker.exit_sidecar import MANIFEST_FILE
from tests.test_e2e_cluster import HANDLERS, IN_DOMAIN, hd_status, serving_pods, wait_for

if TYPE_CHECKING:
    from tests.k8s_fixtures import K8sApi, OperatorFactory

pytest_plugins = ["tests.k8s_fixtures", "tests.real_workers"]
pytestmark = pytest.mark.slow

NAME = "tiny"  # the e2e helpers read this HeliosDeployment
TEXT = "\n".join(
    f"line {n}: operators reconcile custom resources, and early exit lets easy tokens leave sooner." for n in range(40)
)
TEXTS_CONFIGMAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "calibration-text", "namespace": "default"},
    "data": {"texts.txt": TEXT},
}
HELIOS_DEPLOYMENT = f"""\
apiVersion: helios.dev/v1alpha1
kind: HeliosDeployment
metadata:
  name: {NAME}
  namespace: default
spec:
  candidates:
    - name: fitted
      model: helios-ee-tiny
      calibrate:
        texts:
          configMapRef: {{name: calibration-text, key: texts.txt}}
        tokens: 400
    - name: no-text
      model: helios-ee-tiny
      calibrate:
        texts:
          configMapRef: {{name: calibration-text, key: missing.txt}}
        tokens: 400
  objective: latency
  accuracy:
    minAgreement: 0.5
  evaluation:
    promptsPerCandidate: 2
    maxNewTokens: 8
    prompts:
      inline: {IN_DOMAIN!r}
  monitoring:
    interval: 1s
  worker:
    preStopDelay: 1s
    env:
      - name: HELIOS_TORCH_THREADS
        value: "1"
"""


def reports(k8s_api: K8sApi) -> list[dict[str, Any]]:
    configmap = k8s_api.kubectl_json("get", "configmap", f"{NAME}-evaluation")
    return json.loads(configmap["data"]["reports.json"])


def process_env(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)


@pytest.mark.timeout(300)
def test_a_calibration_job_feeds_evaluation_and_serving_and_a_failed_one_fails_its_candidate_only(
    k8s_api: K8sApi, real_worker_operator: OperatorFactory, pod_runner: PodRunner
) -> None:
    k8s_api.apply(json.dumps(TEXTS_CONFIGMAP))
    with real_worker_operator(HANDLERS, namespace="default") as runner:
        k8s_api.apply(HELIOS_DEPLOYMENT)
        status = wait_for(lambda: (s := hd_status(k8s_api))["phase"] == "Serving" and s, "Serving", timeout=200)
        assert status["currentModel"] == "fitted"

        # The missing key failed only its own candidate, with the Job's and the container's reason.
        [failure] = status["failedCandidates"]
        assert failure["name"] == "no-text"
        assert f"calibration Job {NAME}-calibrate-no-text failed" in failure["reason"]
        assert "missing.txt" in failure["reason"], failure["reason"]
        job = k8s_api.kubectl_json("get", "job", f"{NAME}-calibrate-no-text")
        assert job["status"]["failed"] == 1

        # The succeeded Job: owned by the HeliosDeployment, recorded with its inputs' hash.
        job = k8s_api.kubectl_json("get", "job", f"{NAME}-calibrate-fitted")
        assert job["status"]["succeeded"] == 1
        assert job["metadata"]["ownerReferences"][0]["kind"] == "HeliosDeployment"
        [record] = status["calibrations"]
        assert record == {
            "name": "fitted",
            "specHash": job["metadata"]["annotations"]["helios.dev/calibration-hash"],
            "exits": "/mnt/exits/fitted",
        }
        claim = k8s_api.kubectl_json("get", "pvc", f"{NAME}-exits")
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]

        # The evaluation ran with the Job's sidecar, and so does the serving pod.
        [report] = reports(k8s_api)
        assert report["model"] == "fitted" and report["exits"] is not None, report.get("exits")
        template = k8s_api.kubectl_json("get", "deployment", NAME)["spec"]["template"]["spec"]
        assert {"name": "HELIOS_EXITS", "value": "/mnt/exits/fitted"} in template["containers"][0]["env"]
        sidecar = pod_runner.workdir / CLAIMS_DIR / f"{NAME}-exits" / "fitted"
        assert (sidecar / MANIFEST_FILE).is_file()
        [pod] = wait_for(
            lambda: [p for p in serving_pods(k8s_api) if p["metadata"]["name"] in pod_runner.containers],
            "a serving pod",
            timeout=30,
        )
        worker = pod_runner.containers[pod["metadata"]["name"]]
        assert process_env(worker.process.pid)["HELIOS_EXITS"] == str(sidecar)

    assert runner.exception is None
    assert not pod_runner.errors, pod_runner.errors
