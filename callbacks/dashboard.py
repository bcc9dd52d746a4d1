"""``dashboard/index.html`` with PNG plots, rewritten at every validation and when fit ends.

The page is static (it opens from the file system, no server) and is built from the run's own
files, so it shows exactly what ``metrics.csv`` and ``run.json`` say.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from lit_psion.core import run_context
from lit_psion.core.text import shell_words
from lit_psion.loggers import RunCSVLogger
from lit_psion.report import write_dashboard


class Dashboard(Callback):
    """Write the run's dashboard (train/val loss, lr, norms, throughput) at validation and at the end.

    The page shows ``run.json``'s status, so the CLI places this callback after its ``RunDirectory``, which
    records the final status (also when an exception ends the fit).

    Args:
        enabled: False writes nothing.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._warned = False

    def write(self, trainer: L.Trainer) -> Path | None:
        """Draw the page; one that cannot be drawn (its directory taken by a file, a full disk, a metrics.csv it
        cannot read) is a warning line, once: the dashboard is a view of the run, not its evidence, and must not
        fail a fit whose checkpoints and receipts are written (nor add a receipt after a completed run's seal)."""
        layout = run_context(trainer).layout
        if not self.enabled or not trainer.is_global_zero or not layout.is_run():
            return None
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                logger.save()  # flush buffered rows into metrics.csv
        try:
            return write_dashboard(layout.run_dir)
        except Exception as error:  # any failure to draw is the same warning
            if not self._warned:
                self._warned = True
                print(f"lit_psion: warning: the dashboard was not written to {str(layout.dashboard)!r} "
                      f"({type(error).__name__}: {error}); training goes on, and `python -m lit_psion compare "
                      f"{shell_words(layout.run_dir)}` draws the same plots elsewhere", file=sys.stderr)  # fmt: skip
            return None

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        last = 0 < trainer.max_steps <= trainer.global_step or trainer.should_stop
        if not last:  # the fit's last validation: teardown draws the page once, finished (~0.7 s)
            self.write(trainer)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Lightning skips the callbacks' teardown after an exception: draw the page here, with the status the
        # RunDirectory before this callback has just recorded (failed or paused), never masking the exception.
        if trainer.state.fn == TrainerFn.FITTING and trainer.global_step > 0:  # else nothing to plot
            with contextlib.suppress(Exception):
                self.write(trainer)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # after on_fit_end, so run.json already holds the final status
            self.write(trainer)
