"""LightningModules for sessions: base pretraining and online, chunk-by-chunk plastic updates."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lit_psion.sessions.world import Environment, WorldConfig, WorldModel
from lit_psion.strategies import Transactional


class _Batches(Dataset):
    """A fixed list of batches (each item is already a batch; the loader does not collate)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


def _loader(items: list[Any]) -> DataLoader:
    return DataLoader(_Batches(items), batch_size=None, shuffle=False)


def muon(params: list[torch.nn.Parameter], lr: float, momentum: float, ns_steps: int) -> torch.optim.Muon:
    return torch.optim.Muon(params, lr=lr, momentum=momentum, ns_steps=ns_steps, weight_decay=0.0)


class BasePretrain(L.LightningModule):
    """Fit the base weights to the base environment on random rollouts (teacher-forced one-step MSE)."""

    def __init__(self, config: WorldConfig, steps: int, batch: int, seq: int, lr: float, momentum: float,
                 ns_steps: int, seed: int) -> None:  # fmt: skip
        super().__init__()
        self.model, self.env = WorldModel(config), Environment(config)
        for param in self.model.plastic_parameters():
            param.requires_grad_(False)
        generator = torch.Generator().manual_seed(seed)
        self.rollouts = [self.env.rollout(batch, seq, generator) for _ in range(steps)]
        self.optim_args = (lr, momentum, ns_steps)

    def train_dataloader(self) -> DataLoader:
        return _loader(self.rollouts)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(*batch, plastic=False)
        self.log("pretrain/mse", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return muon(self.model.base_parameters(), *self.optim_args)


class OnlineSession(L.LightningModule):
    """A session's online run: predict each transition, then one Muon step per chunk on the plastic weights.

    Every transition is scored before the model learns from it (prequential), by three predictors:
    the base model (no plastic weights), the session as it started the run (no updates), and the
    session as it is updated. ``rows`` holds those per-step squared errors for ``per_step.csv``;
    ``events`` holds each update's transaction receipt (the strategy's ``last_receipt``).
    """

    stage: ClassVar[str] = "session"
    """Receipts of a session run carry stage ``session``."""

    def __init__(self, model: WorldModel, env: Environment, steps: int, chunk: int, seed: int, lr: float,
                 momentum: float, ns_steps: int, optimizer_state: dict | None = None) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        for param in model.base_parameters():
            param.requires_grad_(False)
        self.frozen = WorldModel(model.config)
        self.frozen.load_state_dict(model.state_dict())
        self.frozen.requires_grad_(False)
        z, u = env.stream(steps, torch.Generator().manual_seed(seed))
        self.chunks = [
            (z[start : start + chunk + 1], u[start : start + chunk], torch.tensor(start))
            for start in range(0, steps, chunk)
        ]  # fmt: skip  (the last chunk may be shorter)
        self.optim_args, self.optimizer_state = (lr, momentum, ns_steps), optimizer_state
        self.rows: list[dict[str, float]] = []
        self.events: list[dict[str, Any]] = []

    def train_dataloader(self) -> DataLoader:
        return _loader(self.chunks)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        z, u, start = batch
        with torch.no_grad():
            errors = {
                "mse_base": self.frozen(z[:-1], u, plastic=False),
                "mse_no_update": self.frozen(z[:-1], u),
                "mse_with_update": self.model(z[:-1], u),
            }
            errors = {name: ((pred - z[1:]) ** 2).mean(dim=-1) for name, pred in errors.items()}
        for t in range(u.shape[0]):
            self.rows.append({"step": int(start) + t, **{name: float(e[t]) for name, e in errors.items()}})
        loss = self.model.loss(z, u)
        self.log("session/mse", loss, prog_bar=True)
        return loss

    def transaction_loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        z, u, _ = batch
        return self.model.loss(z, u)

    def transaction_state_norm(self) -> torch.Tensor:
        z, u, _ = self.chunks[min(self.trainer.global_step, len(self.chunks) - 1)]
        return self.model.free_run_norm(z, u)

    def on_train_batch_end(self, outputs: Any, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        strategy = self.trainer.strategy
        if isinstance(strategy, Transactional) and strategy.last_receipt is not None:
            self.events.append({**strategy.last_receipt.to_json_dict(), "chunk_start": int(batch[2])})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return muon(self.model.plastic_parameters(), *self.optim_args)

    def on_train_start(self) -> None:
        if self.optimizer_state:
            self.trainer.optimizers[0].load_state_dict(self.optimizer_state)
