"""The growth planner (seed 002, Archive 04): when a graph core grows, and the receipts it leaves.

The algorithm (SNR shortlist, frozen probes, commit, prox-L1 and Taylor pruning) is
:mod:`lit_psion.nn.growth`; this callback schedules it. After optimizer step 1, then every
``every_n_steps`` optimizer steps until ``until_step``, it runs one :func:`~lit_psion.nn.growth.grow_cycle`
on the model's level-0 graph; with ``policy.l1 > 0`` every optimizer step ends with prox-L1 at the
learning rate the scheduler has just set. Each commit and prune becomes a :class:`GrowthReceipt`
stamped with the run's stage (``growth``: the planner declares it).

Gradient accumulation is honoured (cycles run on optimizer steps only); growth on several processes
is refused (DDP cannot follow a replaced parameter). With the Python API, list the planner before any
checkpoint callback so a checkpoint taken on a cycle step holds that cycle (the CLI puts
``trainer.callbacks`` first).

Probe batches come from the datamodule's ``sample_batch(key)`` with keys fixed by the step, so the
training order is left alone and a resumed run makes the same decisions: the planner's state is the
structure itself (in the model's checkpoint) plus its counters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.fabric.utilities import move_data_to_device
from typing_extensions import override

from lit_psion.callbacks.evidence import EvidenceCallback
from lit_psion.core import run_context
from lit_psion.core.contracts import Growable, ProbeData
from lit_psion.core.errors import ConfigError
from lit_psion.core.receipts import GrowthReceipt
from lit_psion.nn.growth import GrowthPolicy, grow_cycle, prox_l1


class GrowthPlanner(EvidenceCallback):
    """Grow and prune a :class:`~lit_psion.core.contracts.Growable` model's level-0 operator by evidence.

    Args:
        every_n_steps: Optimizer steps between cycles (the first runs after step 1).
        until_step: No cycles after this step (``None``: cycles all run long).
        policy: How a cycle shortlists, probes, commits and prunes (:class:`~lit_psion.nn.growth.GrowthPolicy`).
    """

    stage: ClassVar[str] = "growth"
    shapes_training: ClassVar[bool] = True  # its settings are model settings to a resume (callbacks/checkpoint.py)

    def __init__(self, every_n_steps: int = 50, until_step: int | None = None,
                 policy: GrowthPolicy | None = None) -> None:  # fmt: skip
        if every_n_steps < 1:
            raise ConfigError(f"growth every_n_steps must be >= 1, got {every_n_steps!r}")
        if until_step is not None and until_step < 1:  # cycles ran from step 1 regardless
            raise ConfigError(f"growth until_step must be >= 1 or null (cycles all run long), got {until_step!r}")
        self.every_n_steps, self.until_step = every_n_steps, until_step
        self.policy = policy or GrowthPolicy()
        self.counters = {"cycles": 0, "commits": 0, "prunes": 0}

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, Growable):
            raise ConfigError(f"GrowthPlanner grows a GraphCore; {type(pl_module).__name__} has no growable graph "
                              f"(remove the growth callback or use lit_psion.models.GraphCore)")  # fmt: skip
        if not isinstance(trainer.datamodule, ProbeData):
            have = "fit was given no datamodule" if trainer.datamodule is None else \
                f"{type(trainer.datamodule).__name__} lacks it"  # fmt: skip
            raise ConfigError(f"GrowthPlanner probes on datamodule.sample_batch(key), but {have} "
                              f"(use DynamicsDataModule)")  # fmt: skip
        if trainer.world_size > 1:
            raise ConfigError("GrowthPlanner edits parameters between steps, which DDP's reducer cannot follow: "
                              "grow on one process (devices: 1)")  # fmt: skip

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: no optimizer step yet, and the gathered gradient must survive
        if self.policy.l1 > 0:
            prox_l1(pl_module.growable.operator, trainer.optimizers[0].param_groups[0]["lr"] * self.policy.l1)
        if self.due(trainer.global_step):
            self.cycle(trainer, pl_module, trainer.global_step)

    def due(self, step: int) -> bool:
        """Whether a cycle runs after optimizer step ``step``."""
        return (step - 1) % self.every_n_steps == 0 and (self.until_step is None or step <= self.until_step)

    def cycle(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """One grow-then-prune cycle at ``step``, on probe batches keyed by the step; a receipt per change."""
        self.counters["cycles"] += 1
        batches = [move_data_to_device(trainer.datamodule.sample_batch(step * 1000 + i), pl_module.device)
                   for i in range(self.policy.batches_per_cycle)]  # fmt: skip
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.enable_grad():
                changes = grow_cycle(pl_module.growable, pl_module.task_loss, trainer.optimizers[0], batches,
                                     pl_module.barrier, self.policy)  # fmt: skip
        finally:
            pl_module.train(was_training)
        stage = run_context(trainer).stage
        for change in changes:
            self.counters["commits" if change.action == "commit" else "prunes"] += 1
            self._emit_own(trainer, GrowthReceipt(stage_id=stage, step=step, **dataclasses.asdict(change)))

    @override
    def state_dict(self) -> dict[str, Any]:
        return dict(self.counters)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counters.update(state_dict)
