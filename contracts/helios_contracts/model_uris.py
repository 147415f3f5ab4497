"""Model references as users write them (``hf://``, ``pvc://``, ``file://``), parsed without I/O.

The CRD's pattern, the operator (which mounts the claim a ``pvc://`` reference names) and the
worker (which resolves the reference to a directory, ``helios_worker.model_refs``) share these.
"""

from __future__ import annotations

import os
from pathlib import Path

SUPPORTED_SCHEMES = ("hf://", "pvc://", "file://")
PVC_ROOT = "/mnt/pvc"  # where the operator mounts the claims that pvc:// references name


def pvc_root() -> Path:
    return Path(os.environ.get("HELIOS_PVC_ROOT", PVC_ROOT))


def split_pvc(ref: str) -> tuple[str, str]:
    """``pvc://claim/path`` -> (claim, path); ModelRefError if either is missing."""
    claim, _, path = ref.removeprefix("pvc://").partition("/")
    if not claim or not path.strip("/"):
        raise ModelRefError(f"model {ref!r}: a PVC reference is pvc://CLAIM/PATH")
    return claim, path.strip("/")


def from_uri(ref: str) -> str:
    """A URI reference as the plain reference it stands for (a hub id or a local path)."""
    if ref.startswith("hf://"):
        return ref.removeprefix("hf://")
    if ref.startswith("file://"):
        return ref.removeprefix("file://") or "/"
    if ref.startswith("pvc://"):
        claim, path = split_pvc(ref)
        return str(pvc_root() / claim / path)
    if "://" in ref:
        scheme = ref.split("://", 1)[0]
        raise ModelRefError(
            f"model {ref!r}: the {scheme}:// scheme is not supported; use {', '.join(SUPPORTED_SCHEMES)}, a "
            "built-in alias, a local directory or a hub id (weights are never downloaded at run time)"
        )
    return ref


class ModelRefError(ValueError):
    """A model reference that cannot be used; the message says what was tried and what is allowed."""
