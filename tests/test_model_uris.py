"""Model references as KServe and KubeAI users write them: hf://, pvc://, file://, in the worker,
the HeliosDeployment schema and the pods the operator builds."""

from __future__ import annotations

import shutil

import pytest
from pydantic import ValidationError

from helios_operator.k8s import manifests
from helios_operator.spec import HeliosDeploymentSpec
from helios_worker.loading import load_model
from helios_worker.model_refs import PVC_ROOT, ModelRefError, resolve

OWNER = {
    "apiVersion": "helios.dev/v1alpha1",
    "kind": "HeliosDeployment",
    "metadata": {"name": "d", "namespace": "n", "uid": "u"},
}


def test_file_and_pvc_uris_resolve_to_the_directories_they_name(tiny_model, tmp_path, monkeypatch):
    path = tiny_model("llama")
    assert resolve(f"file://{path}").path == path
    assert load_model(f"file://{path}", layers=1).ref.ref == f"file://{path}"
    monkeypatch.setenv("HELIOS_PVC_ROOT", str(tmp_path))
    shutil.copytree(path, tmp_path / "weights" / "llama" / "tiny")
    resolved = resolve("pvc://weights/llama/tiny")
    assert resolved.path == tmp_path / "weights" / "llama" / "tiny" and resolved.ref == "pvc://weights/llama/tiny"


def test_hf_uris_are_hub_ids_from_the_local_cache(tiny_model, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model("llama"), snapshot)
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text(snapshot.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve("hf://org/tiny").path == resolve("org/tiny").path == snapshot


@pytest.mark.parametrize("ref", ["s3://bucket/model", "gs://b/m", "https://huggingface.co/org/m"])
def test_unsupported_schemes_name_the_supported_ones(ref):
    with pytest.raises(ModelRefError, match=r"hf://, pvc://, file://"):
        resolve(ref)


def test_the_schema_admits_supported_uris_only():
    def spec(model: str) -> HeliosDeploymentSpec:
        return HeliosDeploymentSpec.model_validate({"candidates": [{"name": "a", "model": model}]})

    for model in ("hf://org/m", "pvc://weights/m", "file:///models/m", "org/m", "helios-ee-tiny"):
        assert spec(model).candidates[0].model == model
    for model in ("s3://bucket/m", "org/m:latest"):
        with pytest.raises(ValidationError):
            spec(model)


def test_pvc_candidates_get_their_claims_mounted_read_only():
    spec = HeliosDeploymentSpec.model_validate(
        {
            "candidates": [
                {"name": "a", "model": "pvc://weights/llama"},
                {"name": "b", "model": "pvc://weights/qwen"},
                {"name": "c", "model": "pvc://other/m"},
                {"name": "d", "model": "org/m"},
            ]
        }
    )
    pod = manifests.build_deployment(OWNER, spec, spec.candidates[0], 2, "img")["spec"]["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    assert set(claims) == {"weights", "other"}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    for claim, volume in claims.items():
        assert mounts[f"{PVC_ROOT}/{claim}"] == {"name": volume, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}
