"""Fixtures for tests with real workers behind the API emulator: the pod runner and the operator set up for it.

``pod_runner`` plays kubelet and the Deployment controller (``e2e.pod_runner``); ``real_worker_operator``
is the operator as the chart's ServiceAccount (RBAC enforced), with the CRDs installed and timings
short enough for workers that load in seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from e2e.pod_runner import PodRunner
from helios_operator.crds import crd_files

if TYPE_CHECKING:
    from tests.k8s_fixtures import K8sApi, OperatorFactory

OPERATOR_ENV = {
    "HELIOS_OPERATOR_TICK": "0.5",
    "HELIOS_OPERATOR_EVALUATION_POLL": "1",
    "HELIOS_OPERATOR_HTTP_TIMEOUT": "5",
    "HELIOS_OPERATOR_ENDPOINT_ANNOTATION": "1",  # the runner's pods are reached through this annotation
    # As the chart sets it (on by default): a NetworkPolicy per HeliosDeployment naming the operator's pod.
    "HELIOS_OPERATOR_CONTROL_NETWORK_POLICY": "1",
    "HELIOS_OPERATOR_NAMESPACE": "helios-system",
    "HELIOS_OPERATOR_POD_LABELS": '{"app.kubernetes.io/name": "helios", "app.kubernetes.io/component": "operator"}',
}


@pytest.fixture
def pod_runner(k8s_api: K8sApi, tmp_path: Path) -> Iterator[PodRunner]:
    runner = PodRunner.from_kubeconfig(k8s_api.kubeconfig, "default", tmp_path / "pods", pre_stop=2.0)
    try:
        yield runner.start()
    finally:
        runner.stop()
        for pid in runner.started:  # anything that outlived the stop, by PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def real_worker_operator(
    k8s_api: K8sApi, helios_operator: OperatorFactory, monkeypatch: pytest.MonkeyPatch
) -> OperatorFactory:
    for name, value in OPERATOR_ENV.items():
        monkeypatch.setenv(name, value)
    for text in crd_files().values():
        k8s_api.apply(text)
    return helios_operator
