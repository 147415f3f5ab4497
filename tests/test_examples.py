"""Every manifest under examples/ is a HeliosDeployment both the API server schema and the operator accept."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from helios_operator.crds import crd_files
from helios_operator.spec import HeliosDeployment
from tests.test_crds import spec_validator

if TYPE_CHECKING:
    from tests.k8s_fixtures import K8sApi

pytest_plugins = ["tests.k8s_fixtures"]

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_a_valid_heliosdeployment(path: Path):
    manifest = yaml.safe_load(path.read_text())
    assert manifest["kind"] == "HeliosDeployment"
    HeliosDeployment.model_validate(manifest)
    spec_validator().validate(manifest["spec"])


@pytest.mark.timeout(60)
def test_examples_pass_admission_on_an_api_server(k8s_api: K8sApi) -> None:
    """The emulator admits as a real server does: the CRD's schema (strict fields), defaults and CEL rules."""
    for text in crd_files().values():
        k8s_api.apply(text)
    for path in EXAMPLES:
        assert "created" in k8s_api.apply(path.read_text()).stdout, path.name
    for path in EXAMPLES:
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        stored = k8s_api.kubectl_json("get", "hd", name)["spec"]
        assert "objective" in stored and "replicas" in stored  # given or defaulted by the server
