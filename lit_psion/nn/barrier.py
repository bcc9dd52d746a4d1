"""The relativistic complexity barrier (seed 002): ``gamma(C) = 1 / (scale * sqrt(max(1 - (C/limit)^2, eps)))``.

``L_total = L_task * gamma(C)``: the loss grows without bound as complexity ``C`` approaches
``limit``, like a relativistic mass near the speed of light, so growth that would reach the limit is
never worth it. :func:`admissible` is the hard guard a growth planner applies before committing.
"""

from __future__ import annotations

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
