"""The data every party of a window reads the same way: slices pinned by digest, held-out scoring."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def slice_indices(samples: Any, start: int, stop: int, seed: int) -> list[int]:
    """The training samples of the slice ``[start, stop)``: positions in one seeded permutation of every sample,
    so each slice is drawn from the whole corpus (a slice of consecutive samples would be one scene of one play,
    and its adapter would specialise to it)."""
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))
    return order[start:stop].tolist()


def slice_tokens(samples: Any, indices: list[int]) -> torch.Tensor:
    """The token windows (``block_size + 1`` each) of the samples ``indices``."""
    batch = samples[indices]
    return torch.cat([batch["input_ids"], batch["targets"][:, -1:]], dim=1)


def slice_digest(samples: Any, indices: list[int]) -> str:
    """sha256 of the samples' tokens as little-endian int32, in slice order: what a slice is pinned by."""
    tokens = slice_tokens(samples, indices).to(torch.int32).contiguous()
    return hashlib.sha256(tokens.numpy().astype("<i4").tobytes()).hexdigest()


@torch.no_grad()
def held_out_loss(model: nn.Module, samples: Any, start: int, stop: int, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy of ``model`` over samples ``[start, stop)`` (eval mode, every token weighed
    the same)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for first in range(start, stop, batch_size):
            batch = samples[list(range(first, min(first + batch_size, stop)))]
            logits = model(batch["input_ids"])
            total += float(F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="sum"))
            count += batch["targets"].numel()
    finally:
        model.train(was_training)
    return total / max(count, 1)
