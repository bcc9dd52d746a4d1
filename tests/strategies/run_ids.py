"""For launched fits: each rank writes the run it trains to ``$LIT_PSION_TEST_RUN_IDS/rank{r}`` for a test to read.

    --trainer.callbacks+=tests.strategies.run_ids.RecordRunId
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L

from lit_psion.core import run_context


class RecordRunId(L.Callback):
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = Path(os.environ["LIT_PSION_TEST_RUN_IDS"])
        (out / f"rank{trainer.global_rank}").write_text(run_context(trainer).layout.run_id)
