"""Checkpoints under ``<run_dir>/checkpoints/`` with a pointer that moves only to durable, verified ones.

Each ``step-NNNNNN/`` directory is written by Lightning through :class:`ManifestCheckpointIO`
(weights as safetensors; optimizer, schedulers, loops, the data cursor and the global RNG state
this callback carries in ``trainer_state.pt``; a digest manifest) and is durable once it exists.
Only then does ``checkpoints/pointer.json`` name it, with its manifest's sha256. Resuming reads the
pointer, never file modification times, verifies every digest, and falls back to the newest
checkpoint that verifies when the pointed-to one does not.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from lit_psion.callbacks.checkpoint_io import EXTRA_KEY, MANIFEST, WEIGHTS, verify_checkpoint
from lit_psion.callbacks.evidence import STAGE, EvidenceCallback, receipt_log, run_relative
from lit_psion.core import atomic_write_json, read_json, sha256_file
from lit_psion.core.errors import CheckpointError, ConfigError
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
        # After SIGTERM, Lightning stops right after this hook, so this is the clean place to save.
        step = trainer.global_step
        if step % self.every_n_train_steps == 0 or step == trainer.max_steps or trainer.received_sigterm:
            self.save(trainer)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        if step == self._last_saved_step or step == 0:
            return
        directory = self.directory(trainer)
        path = directory / f"step-{step:06d}"
        trainer.save_checkpoint(path, weights_only=False)  # full trainer state, loadable with weights_only=True
        if trainer.is_global_zero:
            manifest_digest = sha256_file(path / MANIFEST)
            pointer = {"step": step, "checkpoint": path.name, "manifest_sha256": manifest_digest}
            atomic_write_json(directory / POINTER_FILE, pointer)
            self._prune(directory, keep=path.name)
            self.emit(trainer, CheckpointReceipt(
                stage_id=STAGE, step=step, checkpoint=run_relative(trainer, path), manifest_digest=manifest_digest,
                object_digest=read_json(path / MANIFEST)["files"][WEIGHTS]["sha256"],
                writer=f"rank{trainer.global_rank}", durability="durable",
            ))  # fmt: skip
            if (log := receipt_log(trainer)) is not None:
                log.sync()
        trainer.strategy.barrier("lit_psion.checkpoint")
        self._last_saved_step = step

    def _prune(self, directory: Path, keep: str) -> None:
        for staging in directory.glob(".step-*.tmp-*"):  # left by a process killed mid-write
            shutil.rmtree(staging, ignore_errors=True)
        saved = sorted(p for p in directory.glob("step-*") if p.is_dir())
        for old in saved[: max(0, len(saved) - self.keep_last_k)]:
            if old.name != keep:
                shutil.rmtree(old)

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Hand the manifest its run-level fields (ManifestCheckpointIO writes them to manifest.json)."""
        pointer = self.directory(trainer) / POINTER_FILE
        manifest = getattr(trainer.datamodule, "manifest", None)
        loader = trainer.train_dataloader
        checkpoint[EXTRA_KEY] = {
            "run_id": Path(trainer.default_root_dir).name,
            "model_signature": getattr(pl_module, "model_signature", None),
            "data_manifest_digest": manifest.digest if manifest else None,
            "cursor": loader.state_dict() if hasattr(loader, "state_dict") else None,
            "parent": read_json(pointer)["checkpoint"] if pointer.exists() else None,
            "writer": f"rank{trainer.global_rank}",
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        # Captured while the checkpoint is written, so a resumed run draws the same dropout masks.
        return {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch_rng"])
        random.setstate(state_dict["python_rng"])


def resolve_checkpoint(run_dir: str | Path, rejected: list[tuple[Path, str]] | None = None) -> Path:
    """The checkpoint to resume ``run_dir`` from: the pointed-to one if it verifies, else the newest that does.

    Args:
        run_dir: the run directory.
        rejected: if given, receives (checkpoint, reason) for every checkpoint skipped on the way.

    Raises:
        CheckpointError: no pointer, or no checkpoint that verifies (naming the pointed-to one's problem).
    """
    directory = Path(run_dir) / "checkpoints"
    pointer_path = directory / POINTER_FILE
    if not pointer_path.exists():
        raise CheckpointError(
            f"run {Path(run_dir).name!r} has no durable checkpoint yet ({pointer_path} is missing); "
            "start a new run without --ckpt_path"
        )
    pointer = read_json(pointer_path)
    pointed = directory / pointer["checkpoint"]
    try:
        _verify_pointed(pointed, pointer["manifest_sha256"])
        return pointed
    except CheckpointError as error:
        problem = error
    skipped = [(pointed, str(problem))]
    steps = sorted((p for p in directory.glob("step-*") if p.is_dir() and p != pointed), reverse=True)
    for candidate in steps:
        try:
            verify_checkpoint(candidate)
        except CheckpointError as error:
            skipped.append((candidate, str(error)))
            continue
        if rejected is not None:
            rejected.extend(skipped)
        print(f"lit_psion: warning: {problem}; resuming from {candidate.name}, the newest checkpoint that verifies",
              file=sys.stderr)  # fmt: skip
        return candidate
    raise problem


def _verify_pointed(path: Path, manifest_sha256: str) -> None:
    if (path / MANIFEST).is_file() and sha256_file(path / MANIFEST) != manifest_sha256:
        raise CheckpointError(f"checkpoint manifest {str(path / MANIFEST)!r} does not match the digest in the pointer")
    verify_checkpoint(path)
