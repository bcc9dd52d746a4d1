"""``ShardRecorder``: each rank's own shards of the parameters and optimizer state before and after every step.

For transactions under FSDP2, where a rollback must put back exactly the shards each rank holds.
Usable from YAML (``class_path: tests.strategies.shard_recorder.ShardRecorder``); writes
``OUT/rank{r}.pt`` at the end of training, loadable with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.distributed.tensor import DTensor


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.to_local() if isinstance(tensor, DTensor) else tensor).detach().clone()


def local_shards(trainer: L.Trainer) -> dict[str, list[Any]]:
    """This rank's part of every parameter the optimizer updates, and of its state, in the optimizer's order."""
    optimizer = trainer.optimizers[0]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = [{key: _local(value) for key, value in sorted(optimizer.state.get(p, {}).items())} for p in params]
    return {"params": [_local(p) for p in params], "state": state}


class ShardRecorder(Callback):
    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.before[trainer.global_step + 1] = local_shards(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.after[trainer.global_step] = local_shards(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save({"before": self.before, "after": self.after}, self.out / f"rank{trainer.global_rank}.pt")
