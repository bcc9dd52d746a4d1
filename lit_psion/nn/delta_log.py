"""The delta-state log (seed 002): a ring buffer of sparse state deltas with step stamps.

State is reconstructed exactly from the first retained state plus the deltas after it: each
delta stores only the entries that changed (their flat indices and new values, not differences,
so floating-point addition never blurs the reconstruction). When the ring is full, the oldest
delta is folded into the base state.
"""

from __future__ import annotations

from collections import deque

import torch

from lit_psion.core.errors import ConfigError


class DeltaStateLog:
    def __init__(self, initial: torch.Tensor, capacity: int = 1024, step: int = 0) -> None:
        if capacity < 1:
            raise ConfigError(f"delta log capacity must be >= 1, got {capacity!r}")
        self.base, self.base_step = initial.detach().clone(), step
        self.current = self.base.clone()
        self.deltas: deque[tuple[int, torch.Tensor, torch.Tensor]] = deque()
        self.capacity = capacity

    def record(self, step: int, state: torch.Tensor) -> int:
        """Log the entries of ``state`` that differ from the previous one; return how many changed."""
        if (self.deltas and step <= self.deltas[-1][0]) or (step <= self.base_step and not self.deltas):
            raise ConfigError(f"delta log steps must increase, got {step} after "
                              f"{self.deltas[-1][0] if self.deltas else self.base_step}")  # fmt: skip
        flat, previous = state.detach().reshape(-1), self.current.reshape(-1)
        changed = (flat != previous).nonzero().squeeze(1)
        self.deltas.append((step, changed, flat[changed].clone()))
        self.current = state.detach().clone()
        if len(self.deltas) > self.capacity:
            old_step, indices, values = self.deltas.popleft()
            self.base.reshape(-1)[indices] = values
            self.base_step = old_step
        return changed.numel()

    def reconstruct(self, step: int | None = None) -> torch.Tensor:
        """The state as of ``step`` (default: the latest), rebuilt from the base and the deltas."""
        if step is not None and step < self.base_step:
            raise ConfigError(f"step {step} is older than the oldest retained state (step {self.base_step})")
        state = self.base.clone()
        flat = state.reshape(-1)
        for delta_step, indices, values in self.deltas:
            if step is not None and delta_step > step:
                break
            flat[indices] = values
        return state
