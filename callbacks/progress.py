"""Lightning's Rich progress bar, labelled sensibly for step-bounded runs."""

from __future__ import annotations

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
