"""A small linear-regression LightningModule whose batches can be poisoned, for transaction tests.

Poison lives in the data: ``poison[batch_number] = "nan"`` puts a NaN into that batch's inputs;
``"spike"`` scales its inputs and targets by 10 (loss x100), so one SGD step on it overshoots and
raises the loss it measures. Batches are numbered by position in an epoch (sample i of a batch
of size b belongs to batch i // b), so the same batch is poisoned in every epoch.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, TensorDataset


class Regression(L.LightningModule):
    def __init__(self, poison: dict[int, str] | None = None, poison_rank: int | None = None, lr: float = 0.05,
                 samples: int = 64, dim: int = 8, batch_size: int = 8) -> None:  # fmt: skip
        super().__init__()
        self.poison, self.poison_rank, self.lr, self.batch_size = dict(poison or {}), poison_rank, lr, batch_size
        with torch.random.fork_rng():  # the same start in every process (torch seeds each process at random)
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(dim, 1)
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(samples, dim, generator=generator)
        self.y = self.x @ torch.randn(dim, 1, generator=generator) + 0.01 * torch.randn(samples, 1, generator=generator)

    def train_dataloader(self) -> DataLoader:
        index = torch.arange(len(self.x))
        return DataLoader(TensorDataset(index, self.x, self.y), batch_size=self.batch_size, shuffle=False)

    def loss(self, batch: Any) -> torch.Tensor:
        index, x, y = batch
        kind = self.poison.get(int(index[0]) // self.batch_size)
        if kind is not None and self.poison_rank in (None, self.global_rank):
            if kind == "nan":
                x = x.clone()
                x[0, 0] = float("nan")
            elif kind == "spike":
                x, y = x * 10, y * 10
        return F.mse_loss(self.layer(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss)
        return loss

    def transaction_loss(self, batch: Any) -> torch.Tensor:
        return self.loss(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class StateRecorder(Callback):
    """Clones of the parameters and optimizer state before and after every training step."""

    def __init__(self) -> None:
        self.before: list[dict] = []
        self.after: list[dict] = []

    @staticmethod
    def state(trainer: L.Trainer, module: L.LightningModule) -> dict:
        clone = lambda t: t.detach().clone()  # noqa: E731
        optimizer = trainer.optimizers[0].state_dict()
        state = {k: {n: clone(v) if isinstance(v, torch.Tensor) else v for n, v in s.items()}
                 for k, s in optimizer["state"].items()}  # fmt: skip
        return {"params": {k: clone(v) for k, v in module.state_dict().items()}, "optimizer": state}

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self.before.append(self.state(trainer, module))

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self.after.append(self.state(trainer, module))


class PoisonGradients(Callback):
    """Make a gradient NaN on the given (1-based) optimizer steps, so a transactional strategy rolls them back.

    It acts in ``on_after_backward``, inside Lightning's training closure, so the strategy sees the
    NaN in the gradient norm (``nonfinite_grad``) exactly as it would see a real one. Usable from
    YAML: ``class_path: tests.strategies.regression.PoisonGradients``.
    """

    def __init__(self, steps: list[int], rank: int | None = None) -> None:
        self.steps = frozenset(steps)
        self.rank = rank
        """Only this global rank's gradient (``None``: every rank's)."""

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step + 1 in self.steps and self.rank in (None, trainer.global_rank):
            grad = next(p.grad for p in pl_module.parameters() if p.grad is not None)
            if isinstance(grad, DTensor):  # FSDP2: this rank's shard (the strategy reduces the norm over ranks)
                grad = grad.to_local()
            grad.view(-1)[0] = float("nan")


class SlowToStop(Callback):
    """Hold one global rank in ``on_exception`` for ``seconds``, as a slower machine's rank would be, so the other
    ranks reach their exit first. Usable from YAML: ``class_path: tests.strategies.regression.SlowToStop``."""

    def __init__(self, rank: int, seconds: float) -> None:
        self.rank, self.seconds = rank, seconds

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.global_rank == self.rank:
            time.sleep(self.seconds)
