"""Byte counts as people and Kubernetes write them: ``8Gi``, ``512Mi``, ``2G``, ``1073741824``."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kMGT]i?)?\s*$")


def parse_bytes(text: str) -> int:
    """``8Gi``, ``512Mi``, ``2G``, ``1073741824`` -> bytes (Kubernetes quantity suffixes)."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"a byte count like 8Gi, 512Mi or 1073741824 is expected, got {text!r}")
    value = float(match.group(1)) * _UNITS[match.group(2) or ""]
    if value < 1:
        raise ValueError(f"a memory budget must be positive, got {text!r}")
    return int(value)
