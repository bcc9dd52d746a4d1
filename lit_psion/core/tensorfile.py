"""safetensors bytes that are the same for the same tensors and metadata, in every process.

safetensors keeps a file's ``__metadata__`` in a hash map whose order is drawn anew in each process, so two
writes of the same tensors with two or more metadata entries differ in their header's bytes about half the
time: a merge made again, or a window's stacked adapter, got another sha256 than the one its receipt records.
The header is rewritten here with its keys sorted (the same length: only the order changes), so a digest
recorded once can be checked by making the file again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_LENGTH = 8
"""The header's length prefix: a little-endian unsigned 64-bit integer."""


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """``safetensors.torch.save(tensors, metadata)`` with its JSON header's keys in sorted order."""
    from safetensors.torch import save

    data = save(dict(tensors), metadata=dict(metadata) if metadata is not None else None)
    size = int.from_bytes(data[:_LENGTH], "little")
    header = json.loads(data[_LENGTH : _LENGTH + size])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(canonical) > size:  # (never: the same entries, reordered; kept as written rather than cut)
        return data
    return data[:_LENGTH] + canonical.ljust(size, b" ") + data[_LENGTH + size :]
