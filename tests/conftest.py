"""Shared fixtures. Tests that need a Kubernetes API emulator import from tests/k8s_fixtures.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `from tests.x import ...`

# Never reach a model hub from tests; converted built-in models are cached per user.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.model_factory import CONFIGS, make_model

ARCHITECTURES = sorted(CONFIGS)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model(arch, **overrides) -> Path``: a saved random model, built once per session."""
    built: dict[tuple, Path] = {}

    def build(arch: str, **overrides) -> Path:
        key = (arch, tuple(sorted(overrides.items())))
        if key not in built:
            directory = tmp_path_factory.mktemp(f"tiny-{arch}")
            built[key] = make_model(directory, arch, **overrides)
        return built[key]

    return build
