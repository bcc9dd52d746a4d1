"""The data every party of a window reads the same way: slices pinned by digest, held-out scoring."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def slice_tokens(samples: Any, start: int, stop: int) -> torch.Tensor:
    """The token windows (``block_size + 1`` each) of samples ``[start, stop)``."""
    batch = samples[list(range(start, stop))]
    return torch.cat([batch["input_ids"], batch["targets"][:, -1:]], dim=1)


def slice_digest(samples: Any, start: int, stop: int) -> str:
    """sha256 of samples ``[start, stop)``'s tokens as little-endian int32: what a slice is pinned by."""
    tokens = slice_tokens(samples, start, stop).to(torch.int32).contiguous()
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
