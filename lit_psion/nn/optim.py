"""Optimizers and the learning-rate schedule, configured from one block.

``adamw``: AdamW on every parameter (weight decay on matrices and embeddings only).
``muon``: ``torch.optim.Muon`` on the 2-D hidden weights plus AdamW for embeddings, head,
norms and biases, presented to Lightning as one optimizer so gradient clipping, schedulers
and strategies see a single step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import torch
from torch import nn

from lit_psion.core.errors import CheckpointError, ConfigError


@dataclasses.dataclass(kw_only=True)
class OptimizerConfig:
    """One block for the optimizer and its schedule."""

    name: Literal["adamw", "muon"] = "adamw"
    """``adamw``, or ``muon`` (Muon on hidden matrices, AdamW on the rest)."""
    lr: float = 1e-3
    """Peak learning rate (AdamW, and Muon too unless ``muon_lr`` is set)."""
    muon_lr: float | None = None
    """Peak learning rate of the Muon group; ``None`` reuses ``lr`` (Muon's RMS is matched to AdamW's)."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices and embeddings (never on norms or biases)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    momentum: float = 0.95
    """Muon momentum."""
    ns_steps: int = 5
    """Muon Newton-Schulz iterations."""
    warmup_steps: int = 100
    """Linear warmup from 0 to the peak learning rate."""
    decay_steps: int | None = None
    """Cosine decay ends here (defaults to the trainer's max_steps)."""
    min_lr_ratio: float = 0.1
    """The learning rate after decay, as a fraction of the peak."""

    def __post_init__(self) -> None:
        problems: list[str | None] = []
        if self.name not in ("adamw", "muon"):
            problems.append(f"optimizer name must be 'adamw' or 'muon', got {self.name!r}")
        problems += [_problem(name, getattr(self, name), rule, valid) for name, rule, valid in _RULES]
        if not isinstance(self.betas, tuple | list) or len(self.betas) != 2:
            problems.append(f"optimizer.betas must be two numbers in [0, 1), like [0.9, 0.95], got {self.betas!r}")
        else:
            self.betas = tuple(self.betas)
            problems += [_problem(f"betas[{i}]", beta, _unit, "in [0, 1)") for i, beta in enumerate(self.betas)]
        if isinstance(self.betas, tuple) and len(self.betas) == 2 and a_rate(self.lr) and _unit(self.betas[0]) \
                and self.lr / (1 - self.betas[0]) > LARGEST_STEP:  # fmt: skip
            problems.append(f"optimizer.lr / (1 - betas[0]) is AdamW's first step size, and {self.lr!r} / (1 - "
                            f"{self.betas[0]!r}) is over {LARGEST_STEP:.3g}, which overflows float32 in the step; "
                            "lower lr or betas[0]")  # fmt: skip
        if problems := [problem for problem in problems if problem]:
            raise ConfigError("; ".join(problems))


LARGEST_RATE = 1e30
"""The largest learning rate taken: far above any useful one, and far enough below float32's largest (3.4e38) that
the optimizers' own arithmetic stays finite (AdamW's lr / (1 - beta1), Muon's shape factor): a rate near float32's
largest overflowed inside the first step (exit 1) where a merely huge one diverges (exit 7)."""


LARGEST_STEP = 1e36
"""The largest first step size (lr / (1 - beta1)) AdamW is given: float32's largest is 3.4e38."""


def a_rate(value: Any) -> bool:
    """Whether ``value`` can be a learning rate: a finite number > 0 that float32 holds."""
    return _number(value) and 0 < value <= LARGEST_RATE


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _unit(value: Any) -> bool:
    return _number(value) and 0.0 <= value < 1.0


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("lr", a_rate, f"a finite number > 0 and at most {LARGEST_RATE:.3g}"),
    ("muon_lr", lambda v: v is None or a_rate(v), f"a finite number > 0 and at most {LARGEST_RATE:.3g} (or null to "
     "reuse lr)"),
    ("weight_decay", lambda v: _number(v) and v >= 0, "a finite number >= 0"),
    ("momentum", _unit, "in [0, 1)"),
    ("ns_steps", lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    ("warmup_steps", lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    ("decay_steps", lambda v: v is None or (_whole(v) and v >= 1), "a whole number >= 1 (or null for max_steps)"),
    ("min_lr_ratio", lambda v: _number(v) and 0.0 <= v <= 1.0, "in [0, 1]"),
)
"""Each numeric field of :class:`OptimizerConfig`: its name, its valid range, and that range in words."""


def _problem(name: str, value: Any, rule: Callable[[Any], bool], valid: str) -> str | None:
    """What is wrong with ``value`` of field ``name``, or None when ``rule`` holds for it."""
    return None if rule(value) else f"optimizer.{name} must be {valid}, got {value!r}"


class _JointState(Mapping):
    """``optimizer.state`` of a :class:`MuonAdamW`: one view over both inner states.

    Writes go to the optimizer that owns the parameter, so utilities that move state between
    devices (Lightning's ``_optimizer_to_device``) keep working.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self._optimizers = optimizers

    def _owner(self, param: torch.Tensor) -> torch.optim.Optimizer:
        for optimizer in self._optimizers:
            if any(param is p for group in optimizer.param_groups for p in group["params"]):
                return optimizer
        raise KeyError(param)

    def __getitem__(self, param: torch.Tensor) -> Any:
        return self._owner(param).state[param]

    def __setitem__(self, param: torch.Tensor, value: Any) -> None:
        self._owner(param).state[param] = value

    def __iter__(self) -> Iterator[torch.Tensor]:
        for optimizer in self._optimizers:
            yield from optimizer.state

    def __len__(self) -> int:
        return sum(len(optimizer.state) for optimizer in self._optimizers)


class MuonAdamW(torch.optim.Optimizer):
    """Muon on ``muon_params`` and AdamW on ``adamw_groups``, stepped together.

    ``param_groups`` is the concatenation of the inner optimizers' groups (the same dicts), so a
    scheduler or gradient clipper acting on this optimizer acts on both.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__([*muon.param_groups, *adamw.param_groups], defaults={})
        self.state = _JointState(muon, adamw)  # type: ignore[assignment]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # Loading gives the inner optimizers new group dicts: share them again, or a scheduler
        # stepping this optimizer would set learning rates the inner ones never read.
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]


def build_optimizer(
    config: OptimizerConfig, model: nn.Module, hidden_matrices: list[nn.Parameter]
) -> torch.optim.Optimizer:
    """Build the optimizer ``config`` names for ``model``'s trainable parameters.

    Args:
        config: the optimizer block.
        model: the module whose trainable parameters are optimised.
        hidden_matrices: the 2-D weights Muon takes when ``config.name == "muon"``.
    """
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    hidden_ids = {id(p) for p in hidden_matrices}
    matrices = [p for p in params if p.ndim >= 2]
    vectors = [p for p in params if p.ndim < 2]
    adamw_kwargs = {"lr": config.lr, "betas": config.betas}
    if config.name == "adamw":
        groups = [{"params": matrices, "weight_decay": config.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
        return held_to_its_params(torch.optim.AdamW([g for g in groups if g["params"]], **adamw_kwargs))
    muon_params = [p for p in matrices if id(p) in hidden_ids]
    others = [p for p in matrices if id(p) not in hidden_ids]
    if not muon_params:
        raise ConfigError("optimizer 'muon' found no trainable hidden matrices; use 'adamw'")
    muon = torch.optim.Muon(
        muon_params,
        lr=config.muon_lr or config.lr,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
        ns_steps=config.ns_steps,
        adjust_lr_fn=None if config.muon_lr else "match_rms_adamw",
    )
    groups = [{"params": others, "weight_decay": config.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    if not any(group["params"] for group in groups):  # Muon takes every trainable tensor (LoRA adapters can)
        return held_to_its_params(muon)
    adamw = torch.optim.AdamW([g for g in groups if g["params"]], **adamw_kwargs)
    return MuonAdamW(held_to_its_params(muon), held_to_its_params(adamw))


def held_to_its_params(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``optimizer``, refusing a loaded state whose per-parameter tensors do not have their parameters' shapes (a
    checkpoint's optimizer state from another model): a CheckpointError (exit 4) at the load, before a step fails
    deep in the update with a size mismatch."""

    def check(loaded: torch.optim.Optimizer) -> None:
        for param in (param for group in loaded.param_groups for param in group["params"]):
            for key, value in loaded.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    raise CheckpointError(f"the checkpoint's optimizer state does not fit the model: its {key!r} of a "
                                          f"parameter of shape {tuple(param.shape)} has shape {tuple(value.shape)}; "
                                          "load it with the model of the run that wrote it")  # fmt: skip

    optimizer.register_load_state_dict_post_hook(check)
    return optimizer


def finite_steps(estimate: float) -> int:
    """The steps a cosine decay spans: the trainer's estimate, refused when the run is endless."""
    if estimate == float("inf"):
        raise ConfigError("cannot place the cosine decay of an endless run: set decay_steps or max_steps")
    return max(1, int(estimate))


def warmup_cosine(warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> Any:
    """The multiplier of the peak learning rate at each step: linear warmup, then cosine to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if step >= decay_steps:
            return min_lr_ratio
        progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
        return min_lr_ratio + 0.5 * (1.0 - min_lr_ratio) * (1.0 + math.cos(math.pi * progress))

    return factor
