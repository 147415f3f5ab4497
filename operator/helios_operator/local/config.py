"""What ``helios run`` serves: the spec from a file (``default.yaml`` when none is given).

The local run reads the same ``HeliosDeploymentSpec`` as the operator, so a manifest tried
with ``helios run`` can be applied to a cluster unchanged. Kubernetes-only settings (worker
image, resources, replicas, the calibration volume) are accepted and ignored here; a ConfigMap
prompt or calibration-text source cannot be read without a cluster, so it is rejected up front.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from helios_operator.spec import HeliosDeploymentSpec, SpecError, load_spec

DEFAULT_CONFIG_NAME = "default.yaml"


def default_config_path() -> Path:
    return Path(str(resources.files("helios_operator.local") / DEFAULT_CONFIG_NAME))


def packaged_prompts_path(name: str = "in_domain.txt") -> Path:
    """The worker's built-in prompts: what a recentTraffic evaluation uses before any traffic."""
    return Path(str(resources.files("helios_worker") / "assets" / "prompts" / name))


def load_run_spec(path: str | Path | None) -> HeliosDeploymentSpec:
    """The spec to run, or SpecError naming the file and the problem."""
    config = Path(path) if path is not None else default_config_path()
    spec = load_spec(config)
    if spec.evaluation.prompts.kind == "configMap":
        raise SpecError(
            f"{config}: evaluation.prompts.configMapRef needs Kubernetes; helios run takes inline prompts "
            "or recentTraffic"
        )
    for candidate in spec.candidates:
        if candidate.calibrate is not None and candidate.calibrate.texts.config_map_ref is not None:
            raise SpecError(
                f"{config}: candidates[{candidate.name}].calibrate.texts.configMapRef needs Kubernetes; helios run "
                "takes calibrate.texts.path"
            )
    return spec


def spec_hash(spec: HeliosDeploymentSpec) -> str:
    """A fingerprint of everything the spec decides, defaults included (so equal meaning, equal hash)."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


def candidate_ref(spec: HeliosDeploymentSpec, name: str) -> str:
    """``ref`` or ``ref@revision`` of candidate ``name``, as the worker commands take it."""
    for candidate in spec.candidates:
        if candidate.name == name:
            return candidate.reference
    raise KeyError(f"no candidate named {name!r}")
