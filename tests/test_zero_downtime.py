"""Zero downtime, proved under load: 8 concurrent streaming clients through a Service, during a layer
change and during a model switch, with real workers (``e2e.pod_runner``) behind a Service-like router
(``e2e.service_router``, kube-proxy's part). Every request must answer 200 and every stream must end
with ``[DONE]``: 0 failed requests and 0 truncated streams.

The layer change is carried out in place (no pod rolls: the same pod serves throughout); the model
switch rolls the Deployment (maxSurge 1, maxUnavailable 0), and the old pod leaves through its
preStop delay (its endpoint goes first) and a drain of the requests it still has.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from e2e.pod_runner import PodRunner
from e2e.service_router import ServiceRouter
from helios_operator.k8s import manifests
from helios_worker.model_refs import resolve

if TYPE_CHECKING:
    from tests.k8s_fixtures import K8sApi, OperatorFactory

pytest_plugins = ["tests.k8s_fixtures", "tests.real_workers"]
pytestmark = pytest.mark.slow

HANDLERS = Path(__file__).resolve().parent.parent / "operator" / "helios_operator" / "k8s" / "handlers.py"
NAME = "steady"
CLIENTS = 8
PROMPTS = ["count from 41 : 41 42", "count from 7 : 7 8", "count from 120 : 120 121"]
MANIFEST = {
    "apiVersion": "helios.dev/v1alpha1",
    "kind": "HeliosDeployment",
    "metadata": {"name": NAME, "namespace": "default"},
    "spec": {
        "candidates": [{"name": "tiny", "model": "helios-ee-tiny"}],
        "objective": "latency",
        "accuracy": {"minAgreement": 0.5},
        "evaluation": {"promptsPerCandidate": 3, "maxNewTokens": 32, "prompts": {"inline": PROMPTS}},
        # No storm, drop or reassessment of its own: the test makes the changes.
        "monitoring": {"interval": "1s", "cooldown": 0, "breachWindowTokens": 100000, "maxBreaches": 100000},
        "worker": {
            "preStopDelay": "3s",  # > the router's 1.5 s endpoint propagation
            "env": [{"name": "HELIOS_TORCH_THREADS", "value": "1"}],
        },
    },
}


class StreamingClients:
    """``CLIENTS`` threads, each sending streamed completions back to back until ``stop``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.completed = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(CLIENTS)]

    def start(self) -> StreamingClients:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, number: int) -> None:
        with httpx.Client(timeout=60.0) as client:
            while not self._stop.is_set():
                body = {"prompt": PROMPTS[number % len(PROMPTS)], "max_tokens": 16, "stream": True, "temperature": 0}
                problem = self._one(client, body)
                with self._lock:
                    if problem is None:
                        self.completed += 1
                    else:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {problem}")

    def _one(self, client: httpx.Client, body: dict[str, Any]) -> str | None:
        try:
            with client.stream("POST", f"{self.url}/v1/completions", json=body) as response:
                if response.status_code != 200:
                    return f"status {response.status_code}: {response.read()[:200]!r}"
                events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"
        if not events or events[-1] != "[DONE]":
            return f"truncated stream: {events[-2:]}"
        chunks = [json.loads(event) for event in events[:-1]]
        if not any(choice.get("finish_reason") for chunk in chunks for choice in chunk.get("choices", [])):
            return "a stream without a finish_reason"
        return None


def wait_for(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(AssertionError, KeyError, IndexError, TypeError):
            if result := condition():
                return result
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.timeout(300)
def test_no_request_fails_during_a_layer_change_and_a_model_switch(
    k8s_api: K8sApi, real_worker_operator: OperatorFactory, pod_runner: PodRunner
) -> None:
    # Endpoint propagation takes this long here (a real cluster takes about as long): the preStop delay
    # (2 s) must outlast it, or requests reach a pod that has started to refuse them.
    router = ServiceRouter(pod_runner.kube, "default", manifests.serving_selector(NAME), refresh=1.5).start()

    def status() -> dict[str, Any]:
        return k8s_api.kubectl_json("get", "hd", NAME).get("status", {})

    def serving_pods() -> list[str]:
        return router.ready_endpoints()

    def live_layers() -> set[int]:
        """What every serving pod's worker says it runs, asked on its control port with the control token."""
        secret = k8s_api.kubectl_json("get", "secret", manifests.control_secret_name(NAME))
        headers = {"Authorization": f"Bearer {base64.b64decode(secret['data']['token']).decode()}"}
        pods = k8s_api.kubectl_json("get", "pods", "-l", f"helios.dev/deployment={NAME},helios.dev/role=serve")
        urls = [p["metadata"]["annotations"][manifests.CONTROL_ENDPOINT_ANNOTATION] for p in pods["items"]]
        return {httpx.get(f"{url}/v1/helios/state", headers=headers).json()["layers_loaded"] for url in urls}

    def history() -> list[dict[str, Any]]:
        return status().get("decisionHistory", [])

    clients = None
    try:
        with real_worker_operator(HANDLERS, namespace="default") as runner:
            k8s_api.apply(json.dumps(MANIFEST))
            chosen = wait_for(lambda: (s := status())["phase"] == "Serving" and s["currentLayers"], "Serving", 120)
            assert chosen < 8, "the low floor should pick fewer than all layers"
            [first_pod] = wait_for(serving_pods, "a ready serving pod", 60)
            wait_for(lambda: router.endpoints, "the router to know the pod", 10)
            clients = StreamingClients(router.url).start()
            wait_for(lambda: clients.completed >= 2 * CLIENTS, "traffic to flow", 60)

            # A layer change in place: a higher floor re-runs select on the stored reports.
            k8s_api.kubectl(
                "patch", "hd", NAME, "--type=merge", "-p", json.dumps({"spec": {"accuracy": {"minAgreement": 0.999}}})
            )
            grown = wait_for(lambda: (layers := status()["currentLayers"]) > chosen and layers, "more layers", 60)
            wait_for(lambda: live_layers() == {grown}, "the live pod to run them", 30)
            done = clients.completed
            wait_for(lambda: clients.completed >= done + 2 * CLIENTS, "traffic at the new layer count", 60)
            assert serving_pods() == [first_pod], "a layer change must not roll the pods"

            # A model switch: a new model reference for the candidate rolls the Deployment.
            new_ref = f"file://{resolve('helios-ee-tiny').path}"
            patch = {"spec": {"candidates": [{"name": "tiny", "model": new_ref}]}}
            k8s_api.kubectl("patch", "hd", NAME, "--type=merge", "-p", json.dumps(patch))

            def switched() -> bool:
                env = k8s_api.kubectl_json("get", "deployment", NAME)["spec"]["template"]["spec"]["containers"][0][
                    "env"
                ]
                pods = serving_pods()
                return any(e.get("value") == new_ref for e in env) and len(pods) == 1 and pods != [first_pod]

            wait_for(switched, "the rollout to the new model", 150)
            done = clients.completed
            wait_for(lambda: clients.completed >= done + 2 * CLIENTS, "traffic on the new pod", 60)
            clients.stop()
        assert runner.exception is None
    finally:
        if clients is not None:
            clients.stop()
        router.stop()
    assert clients.failures == [], clients.failures[:5]
    assert clients.completed > 6 * CLIENTS
    assert len(router.routed) >= 2  # the old pod and the new one both served
    kinds = [d["kind"] for d in history()]
    assert kinds[0] == "select"
