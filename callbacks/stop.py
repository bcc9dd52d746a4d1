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

import signal
import threading
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lit_psion.core.contracts import MembershipAware


def stop_before_training(signum: int, frame: Any) -> None:
    """A fit's SIGTERM handler until Lightning's own is registered: before it, Python's default killed the process
    in silence (exit 143, no line, a runs root just made left behind). Raised as Lightning's, it is said as a
    pause with what the run kept, and what the fit made is taken back."""
    raise SIGTERMException


def hand_sigterm_to_lightning() -> None:
    """Give SIGTERM back to the default just before Lightning registers its handler, which it does not over another."""
    if signal.getsignal(signal.SIGTERM) is stop_before_training:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class StopAgreement(Callback):
    def __init__(self) -> None:
        self._signalled = self._agreed = False
        self._trainer: L.Trainer | None = None

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.world_size > 1 and not isinstance(trainer.strategy, MembershipAware)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        hand_sigterm_to_lightning()  # (the data module's setup, its longest part, is behind)
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


class InterruptAtBoundary(Callback):
    """Ctrl-C stops a fit at the next step (or validation batch) boundary, wherever it lands.

    Python's own SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread is: inside a weakref
    callback or a ``__del__`` Python prints "Exception ignored" and carries on, and the fit trained to its end
    and exited 0 (seen in about 1 of 4 tries). During a fit the first Ctrl-C is only noted, and raised at the
    next boundary, where Lightning's graceful shutdown takes it (exit 130, the run ``paused``); a second one
    raises at once (a fit stuck inside a step). A SIGINT the process was started ignoring stays ignored.

    The boundary is the start of the next step or validation batch, not the end of this step: Lightning runs the
    callbacks' ``on_train_batch_end`` before the model's, which writes the step's metrics row, so raising there
    lost the row of the step the run paused at (and a resume starts after it).
    """

    def __init__(self) -> None:
        self._pressed = 0
        self._previous: Any = None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning's signal connector noted the handlers it puts back at its teardown, whatever ends the fit
        self._pressed = 0
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler and (
                threading.current_thread() is threading.main_thread()):  # fmt: skip
            self._previous = signal.signal(signal.SIGINT, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self._pressed += 1
        if self._pressed > 1:
            raise KeyboardInterrupt

    def _raise_if_pressed(self) -> None:
        if self._pressed:
            self._pressed = 0  # (raised once: Lightning's shutdown ignores SIGINT from here)
            raise KeyboardInterrupt

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._raise_if_pressed()

    @override
    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._raise_if_pressed()

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._give_back()

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._give_back()  # (a fit that raised runs no teardown hook; after Ctrl-C Lightning ignores SIGINT itself)

    def _give_back(self) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGINT) == self._note:
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None
