"""Run under torchrun with 2 processes: rank 1 alone sees a NaN batch at step 3; both must roll back.

``python ddp_rollback.py OUT [ddp|elastic_mesh]``: under TransactionalDDPStrategy (default) or
TransactionalElasticMeshStrategy (a mesh's transactions, with its per-step membership agreement).

Writes ``OUT/rank{r}.pt`` (weights-only loadable): parameters before/after each step and the decisions.
``restore_after`` is 1, so the rollback also skip-lists both ranks' batches in ``OUT/skip_list.json``
(there is no checkpoint to restore), and its receipts in ``OUT/receipts.jsonl``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

from lit_psion.callbacks import Receipts
from lit_psion.strategies import TransactionalDDPStrategy, TransactionalElasticMeshStrategy, TransactionPolicy
from tests.strategies.regression import Regression, StateRecorder


class Decisions(L.Callback):
    def __init__(self) -> None:
        self.decisions: list[str] = []
        self.reasons: list[list[str]] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        strategy = trainer.strategy
        self.decisions.append(strategy.last_decision)
        self.reasons.append([r for r, n in strategy.rollbacks.items() if n and strategy.last_decision == "rollback"])


def main(out: Path, kind: str = "ddp") -> None:
    recorder, decisions = StateRecorder(), Decisions()
    strategy_class = TransactionalElasticMeshStrategy if kind == "elastic_mesh" else TransactionalDDPStrategy
    strategy = strategy_class(TransactionPolicy(restore_after=1), process_group_backend="gloo")
    trainer = L.Trainer(
        strategy=strategy, accelerator="cpu", devices=2,
        max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(out), callbacks=[recorder, decisions, Receipts()],
    )  # fmt: skip
    # 64 samples over 2 ranks (the sampler deals them alternately), batches of 8: rank 1's third batch
    # starts at sample 33, which Regression numbers batch 33 // 8 = 4.
    trainer.fit(Regression(poison={4: "nan"}, poison_rank=1))
    torch.save({"before": [s["params"] for s in recorder.before], "after": [s["params"] for s in recorder.after],
                "decisions": decisions.decisions, "reasons": decisions.reasons},
               out / f"rank{trainer.global_rank}.pt")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:])
