"""Checkpoints under ``<run_dir>/checkpoints/`` with a pointer that moves only to durable files.

Each checkpoint is written by Lightning (weights, optimizer, schedulers, loops, the data cursor)
plus the global RNG state this callback carries, made durable (fsync of the file and the
directory), and only then named by ``checkpoints/pointer.json``. Resuming reads the pointer,
never file modification times, and checks the file's sha256 before loading it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from lit_psion.callbacks.evidence import STAGE, EvidenceCallback, receipt_log, run_relative
from lit_psion.core import atomic_write_json, read_json, sha256_file
from lit_psion.core.errors import CheckpointError, ConfigError
from lit_psion.core.files import fsync_dir
from lit_psion.core.receipts import CheckpointReceipt

POINTER_FILE = "pointer.json"


class PointerCheckpoint(EvidenceCallback):
    """Save a checkpoint every ``every_n_train_steps`` and at the end of training.

    Args:
        every_n_train_steps: Steps between checkpoints.
        keep_last_k: How many checkpoints to keep (the pointed-to one is never deleted).
    """

    def __init__(self, every_n_train_steps: int = 100, keep_last_k: int = 3) -> None:
        if every_n_train_steps < 1:
            raise ConfigError(f"every_n_train_steps must be >= 1, got {every_n_train_steps!r}")
        if keep_last_k < 1:
            raise ConfigError(f"keep_last_k must be >= 1, got {keep_last_k!r}")
        self.every_n_train_steps = every_n_train_steps
        self.keep_last_k = keep_last_k
        self._last_saved_step = -1

    @staticmethod
    def directory(trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir) / "checkpoints"

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # The last step is saved here, mid-epoch, rather than in on_train_end: by then Lightning has
        # closed the epoch, and a run resumed with a larger max_steps would skip to the next one.
        if trainer.global_step % self.every_n_train_steps == 0 or trainer.global_step == trainer.max_steps:
            self.save(trainer)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        if step == self._last_saved_step or step == 0:
            return
        directory = self.directory(trainer)
        path = directory / f"step-{step:06d}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # full trainer state, loadable with weights_only=True
        if trainer.is_global_zero:
            _fsync_file(path)
            fsync_dir(directory)
            digest = sha256_file(path)
            atomic_write_json(directory / POINTER_FILE, {"step": step, "file": path.name, "sha256": digest})
            self._prune(directory, keep=path.name)
            self.emit(trainer, CheckpointReceipt(
                stage_id=STAGE, step=step, checkpoint=run_relative(trainer, path), manifest_digest=None,
                object_digest=digest, writer=f"rank{trainer.global_rank}", durability="durable",
            ))  # fmt: skip
            if (log := receipt_log(trainer)) is not None:
                log.sync()
        trainer.strategy.barrier("lit_psion.checkpoint")
        self._last_saved_step = step

    def _prune(self, directory: Path, keep: str) -> None:
        saved = sorted(directory.glob("step-*.ckpt"))
        for old in saved[: max(0, len(saved) - self.keep_last_k)]:
            if old.name != keep:
                old.unlink()

    @override
    def state_dict(self) -> dict[str, Any]:
        # Captured while the checkpoint is written, so a resumed run draws the same dropout masks.
        return {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch_rng"])
        random.setstate(state_dict["python_rng"])


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resolve_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint ``run_dir``'s pointer names, after checking its sha256.

    Raises:
        CheckpointError: no pointer, a missing file, or a digest mismatch.
    """
    directory = Path(run_dir) / "checkpoints"
    pointer_path = directory / POINTER_FILE
    if not pointer_path.exists():
        raise CheckpointError(
            f"run {Path(run_dir).name!r} has no durable checkpoint yet ({pointer_path} is missing); "
            "start a new run without --ckpt_path"
        )
    pointer = read_json(pointer_path)
    path = directory / pointer["file"]
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} named by {pointer_path} is missing")
    actual = sha256_file(path)
    if actual != pointer["sha256"]:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt: sha256 {actual} does not match {pointer['sha256']} in the pointer"
        )
    return path
