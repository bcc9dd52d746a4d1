"""LightningModules for sessions: base pretraining and online, chunk-by-chunk plastic updates."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader, Dataset

from lit_psion.core import sha256_bytes
from lit_psion.core.receipt_log import emit_receipt
from lit_psion.core.receipts import PolicyPromotionReceipt
from lit_psion.models.base import LitModule
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


class BasePretrain(LitModule):
    """Fit the base weights to the base environment on random rollouts (teacher-forced one-step MSE)."""

    lr_flag: ClassVar[str] = "--lr"

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


class PromotionGate:
    """Which plastic weights a session predicts with: the *served* ones, replaced by the *learner*'s when earned.

    Every chunk is predicted by both before either trains on it (prequentially), and the learner's
    weights are promoted when, summed over the last ``chunks`` chunks, they predicted the stream
    better than the served ones. Without drift the learner's updates fit noise (Muon's steps have a
    fixed size), so it never earns a promotion and the session predicts as if it had not been updated;
    under drift it pulls ahead within a few chunks. ``chunks`` 0 turns the gate off: the session
    predicts with the weights it updates (seed 000).
    """

    def __init__(self, chunks: int, served: dict[str, torch.Tensor],
                 margins: list[tuple[float, float]] = ()) -> None:  # fmt: skip
        self.chunks, self.served = chunks, served
        self.margins: list[tuple[float, float]] = list(margins)[-chunks:] if chunks else []
        """(served, learner) mean squared error of each chunk since the last promotion (the window so far;
        it carries over from one run to the next, so N runs of k chunks gate as one run of N * k)."""

    def score(self, served: torch.Tensor, learner: torch.Tensor) -> dict[str, float] | None:
        """Record one chunk's errors; the window's summed scores when the learner has earned a promotion."""
        if not self.chunks:
            return None
        self.margins = [*self.margins, (float(served.mean()), float(learner.mean()))][-self.chunks :]
        scores = {"served_mse": sum(m[0] for m in self.margins), "learner_mse": sum(m[1] for m in self.margins)}
        return scores if len(self.margins) == self.chunks and scores["learner_mse"] < scores["served_mse"] else None

    def promote(self, learner: dict[str, torch.Tensor]) -> None:
        self.served, self.margins = learner, []


def revision(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a plastic state's tensors (names, dtypes, shapes, bytes)."""
    from lit_psion.sessions.store import tensors_bytes

    return sha256_bytes(tensors_bytes(state))


class OnlineSession(LitModule):
    """A session's online run: predict each transition, then one Muon step per chunk on the plastic weights.

    Every transition is scored before the model learns from it (prequential), by four predictors:
    the base model (no plastic weights), the session as it started the run (no updates), the session
    as it predicts (its served weights, see :class:`PromotionGate`), and the learner being updated.
    ``rows`` holds those per-step squared errors for ``per_step.csv``; ``events`` holds each update's
    transaction receipt (the strategy's ``last_receipt``).
    """

    stage: ClassVar[str] = "session"
    lr_flag: ClassVar[str] = "--lr"
    """Receipts of a session run carry stage ``session``."""

    def __init__(self, model: WorldModel, env: Environment, steps: int, chunk: int, seed: int, lr: float,
                 momentum: float, ns_steps: int, optimizer_state: dict | None = None, gate_chunks: int = 0,
                 served: dict[str, torch.Tensor] | None = None,
                 margins: list[tuple[float, float]] = ()) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        for param in model.base_parameters():
            param.requires_grad_(False)
        if not gate_chunks or served is None:  # without a gate the session predicts with the weights it updates
            served = model.plastic_state()
        self.gate = PromotionGate(gate_chunks, served, margins)
        self.frozen = WorldModel(model.config)  # the session as it started this run: what it predicted with then
        self.frozen.load_state_dict({**model.state_dict(), **served})
        self.frozen.requires_grad_(False)
        self.served = WorldModel(model.config)  # what it predicts with: reloaded on each promotion
        self.served.load_state_dict({**model.state_dict(), **served})
        self.served.requires_grad_(False)
        z, u = env.stream(steps, torch.Generator().manual_seed(seed))
        self.chunks = [
            (z[start : start + chunk + 1], u[start : start + chunk], torch.tensor(start))
            for start in range(0, steps, chunk)
        ]  # fmt: skip  (the last chunk may be shorter)
        self.optim_args, self.optimizer_state = (lr, momentum, ns_steps), optimizer_state
        self.rows: list[dict[str, float]] = []
        self.events: list[dict[str, Any]] = []
        self.promoted_at: list[int] = []
        """The first step of each chunk before which the learner was promoted (its receipts: ``policy_promotion``)."""

    def train_dataloader(self) -> DataLoader:
        return _loader(self.chunks)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        z, u, start = batch
        with torch.no_grad():
            predictions = {
                "mse_base": self.frozen(z[:-1], u, plastic=False),
                "mse_no_update": self.frozen(z[:-1], u),
                "mse_with_update": self.served(z[:-1], u) if self.gate.chunks else self.model(z[:-1], u),
                "mse_learner": self.model(z[:-1], u),
            }
            errors = {name: ((pred - z[1:]) ** 2).mean(dim=-1) for name, pred in predictions.items()}
        for t in range(u.shape[0]):
            self.rows.append({"step": int(start) + t, **{name: float(e[t]) for name, e in errors.items()}})
        scores = self.gate.score(errors["mse_with_update"], errors["mse_learner"])
        if scores is not None:  # before the learner trains on this chunk: both were scored on unseen transitions
            self._promote(scores, int(start))
        loss = self.model.loss(z, u)
        self.log("session/mse", loss, prog_bar=True)
        return loss

    def _promote(self, scores: dict[str, float], start: int) -> None:
        learner = self.model.plastic_state()
        receipt = PolicyPromotionReceipt(
            stage_id=self.stage, previous_revision=revision(self.gate.served), candidate_revision=revision(learner),
            split=f"prequential:{self.gate.chunks}_chunks", scores=scores, decision="promote",
        )  # fmt: skip
        emit_receipt(self.trainer, receipt)
        self.promoted_at.append(start)
        self.gate.promote(learner)
        self.served.load_plastic_state(learner)

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
