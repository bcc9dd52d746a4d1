"""Evidence capture: callbacks that append typed receipts to the run's hash chain.

``Receipts`` owns the run's ``receipts.jsonl``; any :class:`EvidenceCallback` (lit_psion's own
checkpoint callback, or a user's, added by ``class_path``) appends through it with :meth:`emit`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lit_psion.core import sha256_bytes, sha256_json
from lit_psion.core.errors import ConfigError
from lit_psion.core.receipts import (
    CheckpointReceipt,
    EvalReceipt,
    ReceiptBody,
    ReceiptLog,
    TrainerStepReceipt,
    TrainingRunReceipt,
)

RECEIPTS_FILE = "receipts.jsonl"
STAGE = "pretrain"


class EvidenceCallback(Callback):
    """Base class for callbacks that leave receipts. Subclass it and call :meth:`emit`."""

    def emit(self, trainer: L.Trainer, body: ReceiptBody) -> None:
        """Append ``body`` to the run's receipt chain (on rank 0; a no-op when receipts are off)."""
        log = receipt_log(trainer)
        if log is not None and trainer.is_global_zero:
            log.append(body)


def receipt_log(trainer: L.Trainer) -> ReceiptLog | None:
    """The run's receipt log, if a :class:`Receipts` callback is collecting one."""
    for callback in trainer.callbacks:
        if isinstance(callback, Receipts) and callback.chain is not None:
            return callback.chain
    return None


def run_relative(trainer: L.Trainer, path: str | Path) -> str:
    """``path`` relative to the run directory (digested records never hold absolute paths)."""
    return os.path.relpath(path, trainer.default_root_dir)


def batch_digest(batch: dict[str, Any]) -> str:
    """sha256 of the sample ids and the cursor a batch consumed."""
    return sha256_json({"sample_ids": batch["sample_ids"].tolist(), "cursor": list(batch.get("cursor") or ())})


class Receipts(EvidenceCallback):
    """Write ``receipts.jsonl``: run, step, and evaluation receipts in one hash chain.

    Args:
        every_n_steps: Emit a step receipt every n optimizer steps (1: every step).
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        if every_n_steps < 1:
            raise ConfigError(f"receipts.every_n_steps must be >= 1, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.chain: ReceiptLog | None = None
        self._batch_digest: str | None = None
        self._cursor: tuple[int, int] | None = None
        self._resumed_from: str | None = None
        self.rejected: list[tuple[Path, str]] = []
        """Checkpoints skipped when resolving ``--ckpt_path last`` (receipted when training starts)."""

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            run_dir = Path(trainer.default_root_dir)
            self.chain = ReceiptLog(run_dir / RECEIPTS_FILE, run_id=run_dir.name)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resumed_from = trainer.ckpt_path
        event = "resumed" if trainer.ckpt_path else "started"
        self.emit(trainer, self._run_receipt(trainer, pl_module, event, "active"))
        for checkpoint, reason in self.rejected:
            step = int(checkpoint.name.removeprefix("step-"))
            self.emit(trainer, CheckpointReceipt(
                stage_id=STAGE, step=step, checkpoint=run_relative(trainer, checkpoint), manifest_digest=None,
                object_digest=None, writer="resolver", durability="rejected", reason=reason,
            ))  # fmt: skip

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._batch_digest = batch_digest(batch) if isinstance(batch, dict) and "sample_ids" in batch else None
        self._cursor = tuple(batch["cursor"]) if isinstance(batch, dict) and batch.get("cursor") else None

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or outputs is None:
            return
        if getattr(trainer.strategy, "last_decision", None) == "rollback":
            return  # a transactional strategy undid this step; its transaction receipt says why
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        optimizer = trainer.optimizers[0]
        checkpoint, self._resumed_from = self._resumed_from and run_relative(trainer, self._resumed_from), None
        self.emit(trainer, TrainerStepReceipt(
            stage_id=STAGE, step_in=step - 1, step_out=step, batch_digest=self._batch_digest or "", cursor=self._cursor,
            loss=float(loss), lr=float(optimizer.param_groups[0]["lr"]),
            optimizer=type(optimizer).__name__, checkpoint=checkpoint,
        ))  # fmt: skip

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and _finite(v)}
        manifest = getattr(trainer.datamodule, "manifest", None)
        self.emit(trainer, EvalReceipt(
            stage_id=STAGE, step=trainer.global_step, split="val", data_manifest_digest=manifest and manifest.digest,
            policy_revision=f"step-{trainer.global_step}", scores=scores,
        ))  # fmt: skip

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        event = "paused" if trainer.interrupted else "completed"
        self.emit(trainer, self._run_receipt(trainer, pl_module, event, event))
        if self.chain is not None:
            self.chain.sync()

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.chain is not None:
            self.chain.close()

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        event = "paused" if isinstance(exception, KeyboardInterrupt | SIGTERMException) else "failed"
        self.emit(trainer, self._run_receipt(trainer, pl_module, event, event, f"{type(exception).__name__}"))
        if self.chain is not None:
            self.chain.sync()

    def _run_receipt(
        self, trainer: L.Trainer, pl_module: L.LightningModule, event: str, status: str, outcome: str | None = None
    ) -> TrainingRunReceipt:
        manifest = getattr(trainer.datamodule, "manifest", None)
        config = Path(trainer.default_root_dir) / "config.yaml"
        return TrainingRunReceipt(
            stage_id=STAGE, event=event, status=status,
            config_digest=sha256_bytes(config.read_bytes()) if config.exists() else None,
            data_manifest_digest=manifest.digest if manifest else None,
            model_signature=getattr(pl_module, "model_signature", None),
            checkpoint_lineage=(run_relative(trainer, trainer.ckpt_path),) if trainer.ckpt_path else (),
            outcome=outcome,
        )  # fmt: skip


def _finite(value: Any) -> bool:
    return bool(torch.isfinite(torch.as_tensor(value)).all())
