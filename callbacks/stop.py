"""``StopAgreement``: a SIGTERM stops every rank of a multi-process fit at the same step boundary.

Lightning's own SIGTERM handler broadcasts from inside the signal handler: a collective that only
the signalled rank enters, in the middle of whatever it was doing. Under DDP or FSDP2 that meets
another collective on another rank and the run hangs. This callback makes the handler only note the
signal (and pass it to the ranks Lightning started from this process). Each step then starts with a
one-int all-reduce, so every rank learns of a signal seen by any rank at the same step, outside an
accumulation window. Every rank then trains that step, ``PointerCheckpoint`` saves at its end, and
Lightning's fit loop raises ``SIGTERMException`` on every rank (exit 143, run.json ``paused``).

An elastic mesh strategy (``MembershipAware``) keeps its own agreement, which also carries drains.
``python -m lit_psion fit`` adds this callback to every run.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lit_psion.core.contracts import MembershipAware


class StopAgreement(Callback):
    def __init__(self) -> None:
        self._signalled = self._agreed = False
        self._trainer: L.Trainer | None = None

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.world_size > 1 and not isinstance(trainer.strategy, MembershipAware)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._signalled = self._agreed = False
        if stage == "fit" and self._active(trainer):
            self._trainer = trainer
            trainer._signal_connector._sigterm_notifier_fn = self._note  # registered by Lightning after setup

    def _note(self, signum: int, *_: Any) -> None:
        if not self._signalled and self._trainer is not None and (launcher := self._trainer.strategy.launcher):
            launcher.kill(signum)  # the ranks Lightning started from this process get it too
        self._signalled = True

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if not self._active(trainer) or self._agreed or trainer.fit_loop.epoch_loop._should_accumulate():
            return  # one process, a mesh (its own agreement), already agreed, or mid accumulation window
        flag = torch.tensor([int(self._signalled)], device=trainer.strategy.root_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # the same answer on every rank
        if flag.item():
            self._agreed = trainer._signal_connector.received_sigterm = True

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = None
