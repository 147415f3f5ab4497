"""The whole loop with real processes and no cluster: API emulator, HELIOS operator, real workers.

``e2e.pod_runner`` plays kubelet and the Deployment controller: evaluation pods and serving
pods become ``helios serve`` processes on 127.0.0.1. The HeliosDeployment is applied with the
real kubectl; its two candidates are the built-in 8-layer ``helios-ee-tiny`` under two names.
The operator logs in as the Helm chart's ServiceAccount, so the emulator enforces the chart's
RBAC on each of its calls, and admits every manifest as a real API server would (CRD schema, CEL).
The test checks the evaluation, the serving Deployment, requests answered by the worker, and
that out-of-domain traffic provokes a breach storm whose decision (more layers, or a switch)
shows in the HeliosStatus history, with no failed request across the change. Requests go to a
ready serving pod's endpoint, picked afresh for each request, as a Service would route them.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from e2e.pod_runner import PodRunner, container_env
from helios_operator.k8s.manifests import CONTROL_ENDPOINT_ANNOTATION, ENDPOINT_ANNOTATION
from helios_operator.k8s.workers import is_ready
from helios_operator.local.config import packaged_prompts_path

if TYPE_CHECKING:
    from tests.k8s_fixtures import K8sApi, OperatorFactory

pytest_plugins = ["tests.k8s_fixtures", "tests.real_workers"]
pytestmark = pytest.mark.slow

HANDLERS = Path(__file__).resolve().parent.parent / "operator" / "helios_operator" / "k8s" / "handlers.py"
NAME = "tiny"
CHANGES = ("add_layers", "switch_model")
IN_DOMAIN = ["count from 41 : 41 42", "count from 7 : 7 8", "count from 120 : 120 121"]

HELIOS_DEPLOYMENT = f"""\
apiVersion: helios.dev/v1alpha1
kind: HeliosDeployment
metadata:
  name: {NAME}
  namespace: default
spec:
  candidates:
    - name: ee-tiny
      model: helios-ee-tiny
    - name: ee-tiny-b
      model: helios-ee-tiny
  objective: latency
  accuracy:
    minAgreement: 0.9
  evaluation:
    # 48 tokens: enough for the 95% bounds select decides on to allow fewer than all 8 layers
    # (from 8 tokens only full depth is inside the breach budget at 95%)
    promptsPerCandidate: 3
    maxNewTokens: 16
    prompts:
      inline: {IN_DOMAIN!r}
  monitoring:
    interval: 1s
    cooldown: 0s
    breachWindowTokens: 20
    # select stays inside targetBreachFraction x maxBreaches: 8 per 20 tokens lets it choose
    # fewer layers on the counting prompts, which out-of-domain prose then storms
    maxBreaches: 8
    targetBreachFraction: 1.0
  worker:
    preStopDelay: 2s  # the test's "endpoint propagation" is the runner's next poll
    env:
      - name: HELIOS_TORCH_THREADS
        value: "1"
"""


def wait_for(condition: Callable[[], Any], what: str, timeout: float, during: Callable[[], None] | None = None) -> Any:
    """Poll ``condition`` until truthy; ``during`` runs between polls (traffic, say)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(AssertionError, KeyError, IndexError, TypeError):
            if result := condition():
                return result
        if during is not None:
            during()
        else:
            time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def hd_status(k8s_api: K8sApi) -> dict[str, Any]:
    return k8s_api.kubectl_json("get", "hd", NAME).get("status", {})


def deployment_env(k8s_api: K8sApi, name: str = NAME) -> dict[str, str]:
    """The serving container's env as a kubelet would resolve it now (ConfigMap references included)."""
    deployment = k8s_api.kubectl_json("get", "deployment", name)
    data = {
        f"ConfigMap/{c['metadata']['name']}": c.get("data") for c in k8s_api.kubectl_json("get", "configmaps")["items"]
    }
    data |= {f"Secret/{c['metadata']['name']}": {"token": "-"} for c in k8s_api.kubectl_json("get", "secrets")["items"]}
    return container_env({"spec": deployment["spec"]["template"]["spec"]}, Path("/"), data.get)


def serving_pods(k8s_api: K8sApi) -> list[dict[str, Any]]:
    selector = f"helios.dev/deployment={NAME},helios.dev/role=serve"
    return k8s_api.kubectl_json("get", "pods", "-l", selector)["items"]


def control_token(k8s_api: K8sApi) -> str:
    secret = k8s_api.kubectl_json("get", "secret", f"{NAME}-control")
    return base64.b64decode(secret["data"]["token"]).decode()


def layers_loaded(k8s_api: K8sApi, pod: dict[str, Any]) -> int:
    """What the live worker says through its control API (its own port, with the control token)."""
    url = pod["metadata"]["annotations"][CONTROL_ENDPOINT_ANNOTATION]
    headers = {"Authorization": f"Bearer {control_token(k8s_api)}"}
    return int(httpx.get(f"{url}/v1/helios/state", headers=headers, timeout=10).json()["layers_loaded"])


def ready_endpoints(k8s_api: K8sApi) -> list[str]:
    return [
        p["metadata"]["annotations"][ENDPOINT_ANNOTATION]
        for p in serving_pods(k8s_api)
        if is_ready(p) and ENDPOINT_ANNOTATION in (p["metadata"].get("annotations") or {})
    ]


class Traffic:
    """Completions sent one at a time to a ready serving pod, every answer kept."""

    def __init__(self, k8s_api: K8sApi) -> None:
        self.k8s_api = k8s_api
        self.client = httpx.Client(timeout=60.0)
        self.statuses: list[tuple[str, int, str]] = []

    def send(self, prompt: str, max_tokens: int) -> None:
        url = ready_endpoints(self.k8s_api)[0]
        response = self.client.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens})
        self.statuses.append((url, response.status_code, response.text[:200]))

    @property
    def failures(self) -> list[tuple[str, int, str]]:
        return [entry for entry in self.statuses if entry[1] != 200]


@pytest.mark.timeout(240)
def test_evaluate_serve_and_adapt_with_real_workers(
    k8s_api: K8sApi, real_worker_operator: OperatorFactory, pod_runner: PodRunner
) -> None:
    out_of_domain = [line for line in packaged_prompts_path("out_of_domain.txt").read_text().splitlines() if line]
    traffic = Traffic(k8s_api)

    with real_worker_operator(HANDLERS, namespace="default") as runner:
        k8s_api.apply(HELIOS_DEPLOYMENT)
        # Evaluation: one real worker per candidate, then a selection.
        status = wait_for(lambda: (s := hd_status(k8s_api))["phase"] == "Serving" and s, "Serving", timeout=120)
        assert status["evaluationRound"] == 1 and status["lastDecision"]["kind"] == "select"
        assert status["currentModel"] in ("ee-tiny", "ee-tiny-b") and status["layersTotal"] == 8
        chosen = status["currentLayers"]
        report = k8s_api.kubectl_json("get", "heliosstatus", NAME)["status"]
        assert sorted(row["name"] for row in report["candidates"]) == ["ee-tiny", "ee-tiny-b"]
        env = deployment_env(k8s_api)
        assert env["HELIOS_MODEL"] == "helios-ee-tiny" and env["HELIOS_LAYERS"] == str(chosen)
        # The control port admits only the operator (a NetworkPolicy the emulator stores but cannot enforce).
        policy = k8s_api.kubectl_json("get", "networkpolicy", f"{NAME}-control")["spec"]
        operator_pods = policy["ingress"][1]["from"][0]["podSelector"]["matchLabels"]
        assert operator_pods["app.kubernetes.io/component"] == "operator"
        assert policy["podSelector"]["matchLabels"].items() <= serving_pods(k8s_api)[0]["metadata"]["labels"].items()

        # A real serving pod answers.
        wait_for(lambda: ready_endpoints(k8s_api), "a ready serving pod", timeout=60)
        for prompt in IN_DOMAIN:
            traffic.send(prompt, max_tokens=4)
        assert not traffic.failures, traffic.failures

        # Out-of-domain traffic: a breach storm, and a decision to go deeper or switch.
        def storm() -> None:
            traffic.send(out_of_domain[len(traffic.statuses) % len(out_of_domain)], max_tokens=8)

        def changed() -> dict[str, Any] | None:
            history = k8s_api.kubectl_json("get", "heliosstatus", NAME)["status"]["decisionHistory"]
            return next((d for d in history if d["kind"] in CHANGES), None)

        pods_before = [p["metadata"]["name"] for p in serving_pods(k8s_api)]
        decision = wait_for(changed, "a layer change or model switch", timeout=60, during=storm)
        assert "breach storm" in decision["reason"]
        env = deployment_env(k8s_api)
        if decision["kind"] == "add_layers":
            assert decision["layers"] > chosen and env["HELIOS_LAYERS"] == str(decision["layers"])
        else:
            assert env["HELIOS_MODEL_NAME"] == decision["model"] != status["currentModel"]

        if decision["kind"] == "add_layers":
            # The target leaves the template alone (the serving ConfigMap holds it): nothing rolls,
            # and the live pod runs the new count, told over its control port.
            assert [p["metadata"]["name"] for p in serving_pods(k8s_api)] == pods_before
            wanted = decision["layers"]
            wait_for(lambda: layers_loaded(k8s_api, serving_pods(k8s_api)[0]) == wanted, "the pod to grow", timeout=30)
        else:
            # A switch: a pod of the new template replaces the old one; traffic flows throughout.
            def rolled() -> bool:
                pods = serving_pods(k8s_api)
                envs = [{e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]} for p in pods]
                return len(pods) == 1 and is_ready(pods[0]) and envs[0]["HELIOS_MODEL_NAME"] == env["HELIOS_MODEL_NAME"]

            wait_for(rolled, "the rollout to the new template", timeout=60, during=storm)
        traffic.send(IN_DOMAIN[0], max_tokens=4)
        assert len(traffic.statuses) > len(IN_DOMAIN) + 1
        assert not traffic.failures, traffic.failures
    assert runner.exception is None
    assert not pod_runner.errors, pod_runner.errors


SHADOW_DEPLOYMENT = f"""\
apiVersion: helios.dev/v1alpha1
kind: HeliosDeployment
metadata:
  name: {NAME}
  namespace: default
spec:
  candidates:
    - name: ee-tiny
      model: helios-ee-tiny
  accuracy:
    minAgreement: 0.5
  evaluation:
    promptsPerCandidate: 3
    maxNewTokens: 16
    prompts:
      inline: {IN_DOMAIN!r}
  monitoring:
    interval: 1s
    cooldown: 0s
    shadow:
      fraction: 1.0
      windowTokens: 10000
  worker:
    preStopDelay: 2s  # the test's "endpoint propagation" is the runner's next poll
    env:
      - name: HELIOS_TORCH_THREADS
        value: "1"
"""


@pytest.mark.timeout(240)
def test_shadow_check_scores_sampled_traffic_at_full_depth(
    k8s_api: K8sApi, real_worker_operator: OperatorFactory, pod_runner: PodRunner
) -> None:
    client = httpx.Client(timeout=60.0)

    with real_worker_operator(HANDLERS, namespace="default") as runner:
        k8s_api.apply(SHADOW_DEPLOYMENT)
        wait_for(lambda: hd_status(k8s_api)["phase"] == "Serving", "Serving", timeout=120)
        env = deployment_env(k8s_api, f"{NAME}-shadow")
        assert env["HELIOS_LAYERS"] == "8" and "HELIOS_SHADOW_FRACTION" not in env
        assert deployment_env(k8s_api)["HELIOS_SHADOW_FRACTION"] == "1.0"
        wait_for(lambda: ready_endpoints(k8s_api), "a ready serving pod", timeout=60)

        def greedy_traffic() -> None:  # only greedy requests are sampled
            url = ready_endpoints(k8s_api)[0]
            prompt = IN_DOMAIN[int(time.monotonic()) % len(IN_DOMAIN)]
            body = {"prompt": prompt, "max_tokens": 8, "temperature": 0}
            assert client.post(f"{url}/v1/completions", json=body).status_code == 200

        def shadow_agreement() -> float | None:
            telemetry = k8s_api.kubectl_json("get", "heliosstatus", NAME)["status"].get("telemetry") or {}
            return telemetry.get("shadowAgreement")

        agreement = wait_for(shadow_agreement, "shadow agreement in HeliosStatus", timeout=90, during=greedy_traffic)
        assert 0.0 < agreement <= 1.0
        checked = next(c for c in hd_status(k8s_api)["conditions"] if c["type"] == "ShadowChecked")
        assert checked["status"] == "True" and "scored at full depth" in checked["message"]
    assert runner.exception is None
