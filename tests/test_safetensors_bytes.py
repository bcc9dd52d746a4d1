"""safetensors bytes written by lit_psion are the same for the same tensors and metadata, every time."""

from __future__ import annotations

import torch
from safetensors import safe_open
from safetensors.torch import load, save

from lit_psion.checkpoint_io import safetensors_bytes

TENSORS = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(3, dtype=torch.bfloat16)}
METADATA = {"rank": "8", "scaling": "1.0", "lit_psion.merged": '{"d_model":32}', "lit_psion.tokenizer": "ab" * 32}


def test_the_same_tensors_and_metadata_give_the_same_bytes(tmp_path) -> None:
    """A merge made again, or a window's stacked adapter, got another sha256 than its receipt recorded about half
    the time: safetensors orders a header's metadata anew in each write."""
    assert len({safetensors_bytes(TENSORS, METADATA) for _ in range(20)}) == 1
    assert len({save(TENSORS, metadata=METADATA) for _ in range(20)}) > 1  # what it rewrites: the library's own
    data = safetensors_bytes(TENSORS, METADATA)
    loaded = load(data)
    assert loaded.keys() == TENSORS.keys() and all(torch.equal(loaded[k], v) for k, v in TENSORS.items())
    path = tmp_path / "t.safetensors"
    path.write_bytes(data)
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == METADATA
    assert safetensors_bytes(TENSORS) == safetensors_bytes(dict(reversed(TENSORS.items())))
