"""What a session's world is made of (the model signature covers it), without torch: the command line reads it."""

from __future__ import annotations

import dataclasses

ENV_MODES = ("linear",)


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
        if self.u_dim < 1 or self.n_state < 1:
            raise ConfigError(f"u_dim and n_state must be >= 1, got {self.u_dim!r} and {self.n_state!r}")
