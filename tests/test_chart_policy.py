"""A real policy scanner on the chart: checkov's Kubernetes checks over what Helm renders.

The chart is rendered by real Helm (helm-python-sdk) in several variants, and checkov (offline:
``--skip-download``, ``BC_SKIP_MAPPING``) scans the rendered objects in one run. Nothing may fail
beyond ``SKIPPED``, each entry with the reason it does not apply to the HELIOS operator, and
every skipped check must still fail without its skip (an entry the chart no longer needs goes).
A deliberately insecure variant shows that the scan really checks what matters: privileges, the
root filesystem, a network policy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s_fixtures import render_chart

SKIPPED = {
    # The operator serves nothing: no Service routes to it, so readiness gates no traffic; its
    # liveness probe on kopf's /healthz restarts it when stuck.
    "CKV_K8S_9": "readiness probe",
    # A CPU limit throttles the operator's reconcile bursts (CFS quota) without protecting the node;
    # it requests CPU and has a memory limit, as cert-manager's chart does.
    "CKV_K8S_11": "CPU limit",
    # The tag is pinned to the chart's appVersion and operator.image.digest takes a digest, which
    # wins over the tag; a chart cannot know the digest of an image built after it.
    "CKV_K8S_43": "image by digest",
    # IfNotPresent with a pinned tag or digest starts without the registry; Always would make
    # every restart depend on it. pullPolicy is a value for clusters that want Always.
    "CKV_K8S_15": "imagePullPolicy Always",
    # The operator talks to the API server with its ServiceAccount token: it must be mounted.
    # (The chart's ServiceAccount has automountServiceAccountToken: false; the pod opts in.)
    "CKV_K8S_38": "service account token mounted",
}
VARIANTS = {
    "namespaced": {},
    "cluster-wide": {"rbac": {"clusterWide": True}},
    "everything-on": {
        "dashboard": {"enabled": True},
        "metrics": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}},
        "operator": {"watchNamespaces": ["team-a", "team-b"]},
    },
}
INSECURE = {
    "operator": {
        "containerSecurityContext": {
            "privileged": True,
            "allowPrivilegeEscalation": True,
            "readOnlyRootFilesystem": False,
        },
        "networkPolicy": {"enabled": False},
    }
}
CHECKOV_TIMEOUT_S = 120


def run_checkov(directory: Path) -> list[dict[str, Any]]:
    """checkov's JSON report (one per framework) for the manifests in ``directory``, offline."""
    command = [sys.executable, "-m", "checkov.main", "--directory", str(directory), "--framework", "kubernetes"]
    command += ["--skip-download", "--output", "json"]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_OUTPUT_COLOR": "TRUE"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=CHECKOV_TIMEOUT_S, env=env, check=False)
    assert result.returncode in (0, 1), f"checkov failed to run ({result.returncode}):\n{result.stderr[-2000:]}"
    report = json.loads(result.stdout)
    return report if isinstance(report, list) else [report]


@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Failed check ids per rendered variant (its file's name), the skipped ones included."""
    directory = tmp_path_factory.mktemp("rendered")
    for name, values in {**VARIANTS, "insecure": INSECURE}.items():
        # A release per variant: checkov's graph checks (a pod's NetworkPolicy, matched by labels
        # across files) must not pair one variant's objects with another's.
        objects = render_chart(values, namespace=f"helios-{name}", release=f"helios-{name}")
        (directory / f"{name}.yaml").write_text(yaml.safe_dump_all(objects), encoding="utf-8")
    found: dict[str, set[str]] = {name: set() for name in [*VARIANTS, "insecure"]}
    for report in run_checkov(directory):
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        assert report["summary"]["passed"] > 50, "checkov checked almost nothing"
        for check in report["results"]["failed_checks"]:
            found[Path(check["file_path"]).stem].add(check["check_id"])
    return found


@pytest.mark.timeout(CHECKOV_TIMEOUT_S + 30)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_checkov_finds_nothing_beyond_the_skip_list(failures: dict[str, set[str]], variant: str) -> None:
    assert failures[variant] - set(SKIPPED) == set()


@pytest.mark.timeout(CHECKOV_TIMEOUT_S + 30)
def test_every_skip_is_still_needed(failures: dict[str, set[str]]) -> None:
    assert set(SKIPPED) <= failures["namespaced"]


@pytest.mark.timeout(CHECKOV_TIMEOUT_S + 30)
def test_checkov_catches_an_insecure_operator(failures: dict[str, set[str]]) -> None:
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22", "CKV2_K8S_6"} <= failures["insecure"] - set(SKIPPED)
