"""Lightning's Rich progress bar, counting optimizer steps for step-bounded runs, and a plain line when the output
is not a terminal.

A run bounded by ``max_steps`` (every preset) shows one bar of ``step/max_steps`` with elapsed and remaining
time across epochs, not a bar per epoch. When stdout is not a terminal (a log file, CI, a scheduler), Rich
draws nothing until the end; the bar then prints one line every ``print_every`` steps instead:
``step 120/300 (40%) train/loss 1.234 | 0:01:10 elapsed, 0:01:45 left``.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override

from lit_psion.core.errors import ConfigError


class ProgressBar(RichProgressBar):
    """``RichProgressBar`` over optimizer steps when ``max_steps`` bounds the run.

    Args:
        refresh_rate: As Lightning's (0 hides the bar).
        print_every: Steps between plain progress lines when stdout is not a terminal (default: a twentieth of
            ``max_steps``, at least 1; ``refresh_rate`` 0 prints none).
    """

    def __init__(self, refresh_rate: int = 1, leave: bool = False, print_every: int | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ConfigError(f"progress_bar.refresh_rate must be an integer >= 0 (0: no bar), got {refresh_rate!r}")
        if print_every is not None and (isinstance(print_every, bool) or print_every < 1):
            raise ConfigError(f"progress_bar.print_every must be >= 1 or null, got {print_every!r}")
        super().__init__(refresh_rate=refresh_rate, leave=leave, **kwargs)
        self.print_every = print_every
        self._started: float | None = None
        self._first_step = 0

    @property
    @override
    def is_enabled(self) -> bool:
        """Rich draws only on a terminal: elsewhere it would print its last frame at the end, beside (and unlike)
        the plain lines."""
        return super().is_enabled and sys.stdout.isatty()

    def _counts_steps(self) -> bool:
        trainer = self.trainer
        return trainer.max_epochs in (None, -1) and trainer.max_steps is not None and trainer.max_steps > 0

    @property
    @override
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._counts_steps() else super().total_train_batches

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        if not self._counts_steps():
            return super()._get_train_description(current_epoch)
        return f"{'Step':{len(self.validation_description)}}"

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._started, self._first_step = time.monotonic(), trainer.global_step

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self._counts_steps():
            self._update(self.train_progress_bar_id, trainer.global_step)  # a new epoch continues the count

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._counts_steps():
            self._update(self.train_progress_bar_id, trainer.global_step)
        self._print_line(trainer, pl_module, outputs)

    def _print_line(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any = None) -> None:
        if not self._counts_steps() or not trainer.is_global_zero or not super().is_enabled or sys.stdout.isatty():
            return
        step, total = trainer.global_step, trainer.max_steps
        every = self.print_every if self.print_every is not None else max(1, total // 20)
        if every <= 0 or (step % every and step != total):
            return
        elapsed = time.monotonic() - (self._started or time.monotonic())
        done = step - self._first_step
        left = elapsed / done * (total - step) if done > 0 else 0.0
        loss = self.get_metrics(trainer, pl_module).get("train/loss")  # the last logged step's (all ranks')
        step_loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if trainer.world_size == 1 and isinstance(step_loss, torch.Tensor) and step_loss.numel() == 1:
            loss = float(step_loss.detach())  # this step's: a module logs its scalars after every callback's hook
        shown = f" train/loss {loss:.4g}" if isinstance(loss, float) else f" train/loss {loss}" if loss else ""
        print(f"step {step}/{total} ({100 * step // total}%){shown} | {timedelta(seconds=round(elapsed))} elapsed, "
              f"{timedelta(seconds=round(left))} left", flush=True)  # fmt: skip

    @override
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Values below 0.01 (a dynamics MSE) in 3 significant digits, not as ``0.000``."""
        metrics = super().get_metrics(trainer, pl_module)
        return {key: f"{value:.3g}" if isinstance(value, float) and 0 < abs(value) < 0.01 else value
                for key, value in metrics.items()}  # fmt: skip
