"""The relativistic complexity barrier (seed 002): ``gamma(C) = 1 / (scale * sqrt(max(1 - (C/limit)^2, eps)))``.

``L_total = L_task * gamma(C)``: the loss grows without bound as complexity ``C`` approaches
``limit``, like a relativistic mass near the speed of light, so growth that would reach the limit is
never worth it. :func:`admissible` is the hard guard a growth planner applies before committing.
:class:`Barrier` holds one model's ``limit`` and ``scale`` so the two travel together.
"""

from __future__ import annotations

import dataclasses
import math

from lit_psion.core.errors import ConfigError


def gamma(complexity: float, limit: float, scale: float = 1.0, eps: float = 1e-6) -> float:
    if limit <= 0 or scale <= 0 or eps <= 0:
        raise ConfigError(f"limit, scale and eps must be positive, got {limit!r}, {scale!r}, {eps!r}")
    return 1.0 / (scale * math.sqrt(max(1.0 - (complexity / limit) ** 2, eps)))


def total_loss(task_loss: float, complexity: float, limit: float, scale: float = 1.0) -> float:
    return task_loss * gamma(complexity, limit, scale)


def admissible(complexity: float, added: float, limit: float) -> bool:
    """Whether adding ``added`` keeps complexity strictly below the limit."""
    return complexity + added < limit


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Barrier:
    """One model's barrier: its complexity ``limit`` and ``scale``."""

    limit: float
    """Complexity never reaches this (``gamma`` grows without bound towards it)."""
    scale: float = 1.0
    """``gamma``'s scale: ``gamma(0) = 1 / scale``."""

    def __post_init__(self) -> None:
        if not (self.limit > 0 and self.scale > 0):
            raise ConfigError(f"barrier limit and scale must be > 0, got {self.limit!r} and {self.scale!r}")

    def gamma(self, complexity: float) -> float:
        """``gamma(C)``: the factor on the task loss at complexity ``C``."""
        return gamma(complexity, self.limit, self.scale)

    def admits(self, complexity: float, added: float) -> bool:
        """Whether ``added`` entries keep ``complexity`` strictly below the limit."""
        return admissible(complexity, added, self.limit)
