"""LoRA adapters on a frozen base (seed 004's first adapter lane: LM-head LoRA, rank 8, alpha 16).

``LoRALinear`` wraps an existing ``nn.Linear`` without touching its weight: the output is
``base(x) + (alpha / r) * B(A(dropout(x)))`` with ``A`` random and ``B`` zero, so an untrained
adapter changes nothing. ``merge()`` folds the update into a new weight (never into the base
tensor itself: with tied embeddings the head's weight is the embedding's) and ``unmerge()`` puts the
original tensor back, so unmerge restores the base bitwise. Both are idempotent.
"""

from __future__ import annotations

import math
import re
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from lit_psion.core.errors import ConfigError

TARGETS = {
    "lm_head": r"head",
    "attn_qkv": r"blocks\.\d+\.attn\.qkv",
    "attn_out": r"blocks\.\d+\.attn\.proj",
    "mlp_in": r"blocks\.\d+\.mlp\.gate_up",
    "mlp_out": r"blocks\.\d+\.mlp\.down",
}
"""Declared target names -> module-path patterns in :class:`lit_psion.nn.Decoder`."""


@runtime_checkable
class AdapterModule(Protocol):
    """A module that carries adapter parameters (the only ones an adapter fine-tune trains)."""

    def adapter_params(self) -> list[nn.Parameter]: ...


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {rank!r}")
        if not 0 < alpha <= ALPHA_MAX:  # (NaN fails too) past it the scaled update overflows float32's gradients
            raise ConfigError(f"LoRA alpha must be a number in (0, {ALPHA_MAX:g}], got {alpha!r}")
        if not 0 <= dropout < 1:  # also refuses nan
            raise ConfigError(f"lora_dropout must be in [0, 1), got {dropout!r}")
        self.base, self.rank, self.alpha = base, rank, alpha
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        self.merged = False
        self._unmerged: tuple[nn.Parameter, ...] = ()  # a tuple, so the kept base weight is not a registered parameter

    def adapter_params(self) -> list[nn.Parameter]:
        return [self.lora_a, self.lora_b]

    def delta(self) -> torch.Tensor:
        """The weight update ``(alpha / r) * B @ A`` (out_features, in_features)."""
        return (self.lora_b @ self.lora_a) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + (self.dropout(x) @ self.lora_a.T @ self.lora_b.T) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into a new base weight (a second call does nothing)."""
        if self.merged:
            return
        merged = self.base.weight.detach() + self.delta().to(self.base.weight.dtype)
        if not torch.isfinite(merged).all():
            raise ValueError("refusing to merge: the merged weight is not finite (the adapter holds NaN or inf)")
        self._unmerged = (self.base.weight,)
        self.base.weight = nn.Parameter(merged, requires_grad=False)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the original base weight back, bitwise (a second call does nothing)."""
        if not self.merged:
            return
        (self.base.weight,) = self._unmerged
        self._unmerged = ()
        self.merged = False


ALPHA_MAX = 1e6
"""The largest LoRA alpha taken (the usual values are 8 to 64): 1e30 trained steps whose every gradient norm was
infinite and still reported the run completed."""


def inject_lora(model: nn.Module, targets: list[str], rank: int = 8, alpha: float = 16.0,
                dropout: float = 0.0, check_rank: bool = True) -> list[str]:  # fmt: skip
    """Wrap every Linear of ``model`` that a declared target names; return the wrapped module paths.

    Args:
        check_rank: refuse a rank above the smallest targeted layer's dimension (a new adapter's setting); off
            where an adapter already recorded is loaded (merge, sampling), which is taken as it was trained.

    Raises:
        ConfigError: an unknown target name, or a target that matches no Linear in ``model``.
    """
    if unknown := sorted(set(targets) - TARGETS.keys()):
        raise ConfigError(f"unknown LoRA target {unknown[0]!r}; targets are {', '.join(TARGETS)}")
    if not targets:
        raise ConfigError(f"no LoRA targets given; name at least one of {', '.join(TARGETS)}")
    if repeated := sorted({target for target in targets if targets.count(target) > 1}):
        raise ConfigError(f"LoRA target {repeated[0]!r} is given twice; name each target once")
    wrapped = []
    for target in targets:
        pattern = re.compile(TARGETS[target])
        matches = [name for name, module in model.named_modules()
                   if isinstance(module, nn.Linear) and pattern.fullmatch(name)]  # fmt: skip
        if not matches:
            raise ConfigError(f"LoRA target {target!r} matches no Linear layer in {type(model).__name__}")
        wrapped += matches
    layers = [model.get_submodule(name) for name in wrapped]
    smallest = min(min(layer.in_features, layer.out_features) for layer in layers)
    if check_rank and isinstance(rank, int) and rank > smallest:  # before allocating: a huge rank ran out of memory
        raise ConfigError(f"LoRA rank {rank} exceeds the smallest targeted layer's dimension ({smallest}); a rank "
                          f"above it adds nothing: use at most {smallest}")  # fmt: skip
    for name, layer in zip(wrapped, layers, strict=True):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(layer, rank, alpha, dropout))
    return wrapped


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [module for module in model.modules() if isinstance(module, LoRALinear)]


def adapter_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every :class:`AdapterModule` inside ``model`` (LoRA layers, or any other kind)."""
    adapters = [module for module in model.modules() if module is not model and isinstance(module, AdapterModule)]
    return [param for adapter in adapters for param in adapter.adapter_params()]
