"""A resume takes the optimizer settings its config gives, not only the state its checkpoint restores.

Lightning restores an optimizer's param groups whole, hyper-parameters included, and a scheduler's base rates:
a run resumed with ``--model.optimizer.lr 1e-4`` (after a divergence stopped it, say) would go on at the old rate
while config.yaml said the new one. After the restore, the groups take every setting the config's optimizer
has (learning rate, weight decay, betas; with Muon its rate, momentum and Newton-Schulz steps) and the schedule
its base rates, at the point of the schedule the run had reached. The moments and step counts stay the
checkpoint's. With the run's own settings nothing differs and nothing is touched, so the resume stays bitwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

SCHEDULED = frozenset({"params", "lr", "initial_lr"})
"""Group keys not copied: the parameters themselves, and the rates the schedule sets from its base rates."""


def honour_optimizer_settings(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Give the restored optimizer and schedule the settings ``pl_module.configure_optimizers`` gives now (what
    changed is recorded from the configs, in the resumed receipt). Left alone: optimizers that are not one
    optimizer with an optional ``LambdaLR`` over the same groups, which this does not match."""
    if len(trainer.optimizers) != 1 or len(trainer.lr_scheduler_configs) > 1:
        return
    fresh = pl_module.configure_optimizers()
    if not isinstance(fresh, dict) or not isinstance(fresh.get("optimizer"), torch.optim.Optimizer):
        return
    restored, given = trainer.optimizers[0], fresh["optimizer"]
    if [len(g["params"]) for g in restored.param_groups] != [len(g["params"]) for g in given.param_groups]:
        return
    for old, new in zip(restored.param_groups, given.param_groups, strict=True):
        old.update({key: value for key, value in new.items()
                    if key not in SCHEDULED and _plain(old.get(key)) != _plain(value)})  # fmt: skip
    schedule = trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None
    given_schedule = (fresh.get("lr_scheduler") or {}).get("scheduler")
    lambdas = (torch.optim.lr_scheduler.LambdaLR,)
    if isinstance(schedule, lambdas) and isinstance(given_schedule, lambdas):
        if list(schedule.base_lrs) != list(given_schedule.base_lrs):
            schedule.base_lrs = list(given_schedule.base_lrs)
            for group, base, factor in zip(restored.param_groups, schedule.base_lrs, schedule.lr_lambdas, strict=True):
                group["initial_lr"], group["lr"] = base, base * factor(schedule.last_epoch)
            schedule._last_lr = [group["lr"] for group in restored.param_groups]
    elif schedule is None:
        for old, new in zip(restored.param_groups, given.param_groups, strict=True):
            old["lr"] = new["lr"]


def _plain(value: Any) -> Any:
    """A group setting as compared: a checkpoint may give back a list where the optimizer built a tuple."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(_plain(item) for item in value)
    return value
