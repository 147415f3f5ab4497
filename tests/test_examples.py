"""Every manifest under examples/ is a HeliosDeployment both the API server schema and the operator accept."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helios_operator.spec import HeliosDeployment
from tests.test_crds import spec_validator

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_a_valid_heliosdeployment(path: Path):
    manifest = yaml.safe_load(path.read_text())
    assert manifest["kind"] == "HeliosDeployment"
    HeliosDeployment.model_validate(manifest)
    spec_validator().validate(manifest["spec"])
