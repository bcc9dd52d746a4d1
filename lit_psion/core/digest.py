"""Canonical JSON and sha256 digests (SPEC §3).

Canonical JSON: sorted keys, no insignificant whitespace, UTF-8, floats as Python repr.
Digests are lowercase sha256 hex.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON bytes.

    Raises:
        ValueError: if ``obj`` holds a non-finite float (NaN/inf have no JSON spelling).
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except ValueError:
        _reject_non_finite(obj)  # names the value (json's message does not)
        raise


def _reject_non_finite(obj: Any) -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"canonical JSON cannot encode the non-finite float {obj!r}")
    if isinstance(obj, dict):
        for value in obj.values():
            _reject_non_finite(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _reject_non_finite(value)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """The digest of ``obj``'s canonical JSON."""
    return sha256_bytes(canonical_json(obj))


def sha256_file(path: str | Path) -> str:
    """Stream a file through sha256 without reading it whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
