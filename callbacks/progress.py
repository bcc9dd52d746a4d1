"""Lightning's Rich progress bar, labelled sensibly for step-bounded runs and small losses."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override


class ProgressBar(RichProgressBar):
    """``RichProgressBar`` that shows ``Epoch 3`` rather than ``Epoch 3/-2`` when only max_steps bounds the run."""

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs not in (None, -1):
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        return f"{description:{len(self.validation_description)}}"

    @override
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Values below 0.01 (a dynamics MSE) in 3 significant digits, not as ``0.000``."""
        metrics = super().get_metrics(trainer, pl_module)
        return {key: f"{value:.3g}" if isinstance(value, float) and 0 < abs(value) < 0.01 else value
                for key, value in metrics.items()}  # fmt: skip
