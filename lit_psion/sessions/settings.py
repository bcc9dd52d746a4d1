"""What a session's world is made of (the model signature covers it), without torch: the command line reads it."""

from __future__ import annotations

import dataclasses
import math

from lit_psion.core.errors import ConfigError

ENV_MODES = ("linear",)
MAX_SEED = 2**32 - 1
"""The largest ``--seed`` and ``--env_seed`` (numpy's seeding, which Lightning's seed_everything does, takes 0 to
it)."""
TORCH_SEEDS = (-(2**63), 2**63 - 2)
"""What a base record's ``env_seed`` may hold: torch's generators seed with it and with ``env_seed + 1`` (a base made
before ``--env_seed`` had :data:`MAX_SEED` still loads)."""
MAX_DIM = 1024
"""The largest ``u_dim`` and ``n_state``: the model holds four (n_state, n_state or u_dim) matrices per copy, three
copies in a run, and the environment's eigenvalues are O(n_state^3)."""
MAX_STEPS = 10_000_000
"""The most transitions one ``session run`` takes (its per-step records are held in memory until it commits), and
the longest ``--chunk``."""
MAX_PRETRAIN_STEPS = 1_000_000
"""The most ``--pretrain_steps`` (each step's rollout is drawn before the fit and held in memory)."""
MAX_VALUES = 2**30
"""The most numbers a command's rollouts hold in memory at once (4 GiB of float32): ``init-base``'s pretraining
rollouts, ``run``'s trajectory."""


def rollout_values(config: WorldConfig, rollouts: int, length: int) -> int:
    """How many numbers ``rollouts`` rollouts of ``length`` transitions hold (states and inputs)."""
    return rollouts * ((length + 1) * config.n_state + length * config.u_dim)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WorldConfig:
    """The model and base environment (what the model signature covers)."""

    env_mode: str = "linear"
    u_dim: int = 16
    n_state: int = 32
    env_seed: int = 0
    noise: float = 0.01

    def __post_init__(self) -> None:
        from lit_psion.core.errors import ConfigError

        if self.env_mode not in ENV_MODES:
            raise ConfigError(f"env_mode must be one of {ENV_MODES}, got {self.env_mode!r}")
        sizes = (self.u_dim, self.n_state)
        if not all(type(size) is int and 1 <= size <= MAX_DIM for size in sizes):
            raise ConfigError(f"u_dim and n_state must be whole numbers in [1, {MAX_DIM}], got {self.u_dim!r} and "
                              f"{self.n_state!r}")  # fmt: skip
        if type(self.env_seed) is not int or not TORCH_SEEDS[0] <= self.env_seed <= TORCH_SEEDS[1]:
            raise ConfigError(f"env_seed must be a whole number in [0, {MAX_SEED}], got {self.env_seed!r}")
        if type(self.noise) not in (int, float) or not math.isfinite(self.noise) or self.noise < 0:
            raise ConfigError(f"noise must be a finite number >= 0, got {self.noise!r}")


def fork_copies_optimizer(parent_id: str, child_id: str, copy_optimizer: bool | None,
                          reset_optimizer: bool | None) -> bool:  # fmt: skip
    """Whether a fork copies its parent's optimizer state, from its two flags: give one and the other follows
    (``reset_optimizer=True`` alone means no copy); neither means copy (said without torch, before it is imported).

    Raises:
        ConfigError: both flags alike, or a child id that is its parent's.
    """
    if copy_optimizer is None:
        copy_optimizer = not reset_optimizer if reset_optimizer is not None else True
    if reset_optimizer is None:
        reset_optimizer = not copy_optimizer
    if copy_optimizer == reset_optimizer:
        raise ConfigError("fork needs exactly one of --copy_optimizer 1 or --reset_optimizer 1, got "
                          f"copy_optimizer={int(copy_optimizer)} reset_optimizer={int(reset_optimizer)}")  # fmt: skip
    if parent_id == child_id:
        raise ConfigError(f"fork needs a child id other than its parent's, got {child_id!r} for both")
    return copy_optimizer
