"""When a transactional step is rolled back: the policy both the strategies and the sessions' command line read.

It lives in core (standard library only) so that a command can show its defaults without importing
torch or Lightning; :mod:`lit_psion.strategies.transactional` applies it.
"""

from __future__ import annotations

import dataclasses
import math

from lit_psion.core.errors import ConfigError

MAX_BUFFER_LEN = 1024
"""The most batches a step's loss is measured on (each is kept in memory and run forward every step)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TransactionPolicy:
    """When a step is rolled back, and what repeated rollbacks lead to (YAML: ``policy: {...}``)."""

    rollback_tol: float = 0.20
    """Roll back when post_loss > pre_loss + rollback_tol * |pre_loss| (a loss below 0 may rise by as much)."""
    buffer_len: int = 1
    """Batches the losses are measured on: the current one plus up to buffer_len - 1 recently committed ones."""
    grad_norm_max: float | None = None
    """Roll back when the gradient norm (before clipping) exceeds this (None: no limit)."""
    state_norm_max: float | None = None
    """Roll back when the module's transaction_state_norm() exceeds this (None: no limit)."""
    restore_after: int = 3
    """Consecutive rollbacks after which the last durable checkpoint is restored and the batches skip-listed."""
    stop_after: int = 6
    """Consecutive rollbacks after which the run stops with a TransactionError (exit code 7)."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("rollback_tol", "grad_norm_max", "state_norm_max", "buffer_len", "restore_after", "stop_after"):
            value, integral = getattr(self, name), name in ("buffer_len", "restore_after", "stop_after")
            kind = (int,) if integral else (int, float)
            if (value is None and name.endswith("_max")) or (type(value) is not bool and isinstance(value, kind)
                                                                and not math.isnan(value)):  # fmt: skip
                continue  # (inf is no limit: the sessions' "--grad_norm_max inf")
            wanted = "an int" if integral else "a number" + (" or null" if name.endswith("_max") else "")
            raise ConfigError(f"transaction policy: {name} must be {wanted}, got {value!r}")
        if not self.rollback_tol >= 0:
            problems.append(f"rollback_tol must be >= 0, got {self.rollback_tol!r}")
        if not 1 <= self.buffer_len <= MAX_BUFFER_LEN:
            problems.append(f"buffer_len must be in 1..{MAX_BUFFER_LEN} (1: the current batch only; each step "
                            f"measures its loss on every buffered batch), got {self.buffer_len!r}")  # fmt: skip
        for name, value in (("grad_norm_max", self.grad_norm_max), ("state_norm_max", self.state_norm_max)):
            if value is not None and not value > 0:
                problems.append(f"{name} must be positive, or null for no limit (a session command's --{name} "
                                f"takes inf), got {value!r}")  # fmt: skip
        if not 1 <= self.restore_after <= self.stop_after:
            problems.append(f"need 1 <= restore_after <= stop_after, got {self.restore_after!r} and "
                            f"{self.stop_after!r}")  # fmt: skip
        if problems:
            raise ConfigError("transaction policy: " + "; ".join(problems))
