"""Which training steps log: Lightning writes a training row only every ``log_every_n_steps`` steps."""

from __future__ import annotations

import lightning as L


def writes_log_row(module: L.LightningModule) -> bool:
    """Whether the values this training step logs reach the loggers.

    Lightning writes a row of step metrics every ``log_every_n_steps`` optimizer steps (and when the fit is
    stopping); a value logged on any other step is overwritten before a logger sees it. ``self.log`` costs
    about a millisecond, which is 1-2% of a small model's step, so the training steps log only on these steps.
    The progress bar shows the value of the last step that logged.
    """
    trainer = module._trainer
    if trainer is None:
        return True
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))
