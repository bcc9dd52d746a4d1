"""Test-only callbacks and utilities for driving ``python -m lit_psion`` end to end."""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lit_psion import checkpoint_io
from lit_psion.callbacks.evidence import EvidenceCallback
from lit_psion.checkpoint_io import load_verified
from lit_psion.cli import main
from lit_psion.core import RunLayout, atomic_write_json, read_json
from lit_psion.core.checkpoint import resolve_checkpoint
from lit_psion.core.receipts import (
    ChainSealReceipt,
    CheckpointReceipt,
    ReceiptBody,
    TrainerStepReceipt,
    register_receipt,
)
from lit_psion.core.run import read_latest

TINY = "fixtures/tiny.yaml"
REPO_ROOT = Path(__file__).resolve().parents[1]


class RecordConsumed(Callback):
    """Append ``{"step", "ids"}`` for every training batch to a JSONL file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": trainer.global_step, "ids": batch["sample_ids"].tolist()}) + "\n")


class KillAt(Callback):
    """SIGKILL this process at the end of global step ``step`` (no clean-up runs)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillBeforeDurableReceipt(Callback):
    """SIGKILL this process as the durable receipt of step ``step``'s checkpoint is appended: the checkpoint is
    durable and pointed to, and its receipt is never written (the narrowest kill a resume must accept)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lit_psion.callbacks.checkpoint import PointerCheckpoint
        from lit_psion.core.receipt_log import emit_receipt

        for callback in trainer.callbacks:
            if isinstance(callback, PointerCheckpoint):

                def killing(trainer: L.Trainer, body: Any) -> None:
                    if getattr(body, "durability", None) == "durable" and getattr(body, "step", None) == self.step:
                        os.kill(os.getpid(), signal.SIGKILL)
                    emit_receipt(trainer, body)

                callback._emit_own = killing


class KillBeforeRunRecord(Callback):
    """SIGKILL this process once step ``step``'s durable checkpoint receipt is appended and synced, before run.json
    takes it as its head (the last window of a checkpoint's commit)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lit_psion.callbacks.run_dir import RunDirectory

        for callback in trainer.callbacks:
            if isinstance(callback, RunDirectory):
                receipted = callback.on_checkpoint_receipted

                def killing(trainer: L.Trainer, receipted: Any = receipted) -> None:
                    if trainer.global_step == self.step:
                        os.kill(os.getpid(), signal.SIGKILL)
                    receipted(trainer)

                callback.on_checkpoint_receipted = killing


class KillAfterSeal(Callback):
    """SIGKILL this process at the end of its fit, once its receipts are sealed and before run.json says completed."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lit_psion.callbacks.run_dir import RunDirectory

        def killing(*args: Any) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        for callback in trainer.callbacks:
            if isinstance(callback, RunDirectory):
                callback.on_fit_end = killing


class SigtermAt(Callback):
    """Send this process SIGTERM during global step ``step`` (as a scheduler would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class SigtermInValidation(Callback):
    """Send this process SIGTERM during the validation that follows global step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.state.fn == "fit" and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
            self.step = -1


class SlowExitOnRankZero(Callback):
    """After an exception rank 0 takes ``seconds`` in its exception hooks (as a slow disk or a large dashboard
    would) and again at interpreter exit (as W&B's exit handler would): each outlasts a 5 s poll."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_exception(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.is_global_zero:
            atexit.register(time.sleep, self.seconds)
            time.sleep(self.seconds)


class InterruptAt(Callback):
    """Ctrl-C during global step ``step``: SIGINT to the whole process group, as a terminal sends it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step + 1 == self.step and trainer.is_global_zero:
            os.killpg(os.getpgrp(), signal.SIGINT)


class KillDuringCheckpointWrite(Callback):
    """SIGKILL this process while checkpoint ``step`` is half written: its files staged, not yet renamed."""

    def __init__(self, step: int) -> None:
        self.step = step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        original, marker = checkpoint_io.fsync_path, f".step-{self.step:06d}.tmp-"

        def fsync_then_die(path: str | os.PathLike) -> None:
            if marker in str(path):
                os.kill(os.getpid(), signal.SIGKILL)
            original(path)

        checkpoint_io.fsync_path = fsync_then_die


class KillAfterPointer(Callback):
    """SIGKILL this process right after the pointer moves to checkpoint ``step`` (before anything else runs), or
    with ``before``, once the checkpoint is renamed in but before the pointer moves to it."""

    def __init__(self, step: int, before: bool = False) -> None:
        self.step, self.before = step, before

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lit_psion.callbacks import checkpoint

        original, step, before = checkpoint.write_pointer, self.step, self.before

        def write_then_die(layout: Any, pointer: Any) -> Any:
            if before and pointer.step == step:
                os.kill(os.getpid(), signal.SIGKILL)
            written = original(layout, pointer)
            if written.step == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return written

        checkpoint.write_pointer = write_then_die


class LogsOnStep(Callback):
    """A user's callback logging a metric of its own on every training step."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        pl_module.log("user/metric", float(trainer.global_step), on_step=True, on_epoch=False)


class SlowSteps(Callback):
    """Sleep ``seconds`` after every optimizer step: a scenario's events land at known steps on any machine."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        time.sleep(self.seconds)


class SlowCheckpointWrites(Callback):
    """Make the background write of checkpoint ``step`` stall ``seconds`` before it serializes anything."""

    def __init__(self, step: int, seconds: float) -> None:
        self.step, self.seconds = step, seconds

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        original, seconds, marker = checkpoint_io.save_file, self.seconds, f".step-{self.step:06d}.tmp-"

        def slow_save_file(tensors: dict, filename: str | os.PathLike) -> None:
            if threading.current_thread() is not threading.main_thread() and marker in str(filename):
                time.sleep(seconds)
            original(tensors, filename)

        checkpoint_io.save_file = slow_save_file


def callbacks_config(path: Path, *callbacks: tuple[str, dict]) -> str:
    """Write a config overlay adding ``callbacks`` (class name in this module or a dotted path, init args)."""
    entries = [{"class_path": name if "." in name else f"tests.helpers.{name}", "init_args": args}
               for name, args in callbacks]  # fmt: skip
    path.write_text(json.dumps({"trainer": {"callbacks": entries}}))
    return str(path)


def fit(*args: str, config: str = TINY) -> int:
    return main(["fit", "--config", config, *args])


LAUNCHER_ENV = ("LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                "MASTER_ADDR", "MASTER_PORT")  # fmt: skip
"""What Lightning's launcher writes into os.environ during an in-process multi-rank fit. A subprocess fit that
inherits LOCAL_RANK believes its ranks were started for it, starts none, and waits for them forever."""


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment without a launcher's rank variables, plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}, **extra}


def fit_subprocess(*args: str, config: str = TINY) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lit_psion", "fit", "--config", config, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=subprocess_env())


def latest_checkpoint(root: Path) -> dict[str, Any]:
    """The checkpoint the latest run in ``root`` points at, loaded with ``weights_only=True``."""
    return load_verified(resolve_checkpoint(RunLayout(root, read_latest(root))))


def consumed(path: Path) -> list[list[int]]:
    """Sample ids per step; a later record of a step (replayed after a crash) replaces the earlier."""
    by_step: dict[int, list[int]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record["ids"]
    return [by_step[step] for step in sorted(by_step)]


def assert_tree_equal(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of nested checkpoint structures."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"keys differ at {where}: {sorted(a.keys() ^ b.keys())}"
        for key in a:
            assert_tree_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"lengths differ at {where}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_tree_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"values differ at {where}: {a!r} != {b!r}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LossSpikeReceipt(ReceiptBody):
    """The example evidence plug-in of docs/evidence.md: a receipt when the loss jumps."""

    kind: ClassVar[str] = "example_loss_spike"
    step: int
    loss: float
    previous: float


register_receipt(LossSpikeReceipt)


class LossSpikeEvidence(EvidenceCallback):
    """Leave a LossSpikeReceipt whenever the training loss exceeds ``factor`` times the previous step's."""

    def __init__(self, factor: float = 1.0) -> None:
        self.factor, self.previous = factor, None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        loss = float(outputs["loss"])
        if self.previous is not None and loss > self.factor * self.previous:
            self.emit(trainer, LossSpikeReceipt(step=trainer.global_step, loss=loss, previous=self.previous))
        self.previous = loss


class NoteAt(EvidenceCallback):
    """Leave a LossSpikeReceipt (a user's kind) from the hook named ``hook``: ``setup``, ``on_train_start`` or
    ``teardown``."""

    def __init__(self, hook: str) -> None:
        self.hook = hook

    def _note(self, trainer: L.Trainer, hook: str) -> None:
        if hook == self.hook:
            self.emit(trainer, LossSpikeReceipt(step=trainer.global_step, loss=0.0, previous=0.0))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._note(trainer, "setup")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._note(trainer, "on_train_start")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._note(trainer, "teardown")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _OwnCheckpoint(CheckpointReceipt):
    """A user's subclass of lit_psion's checkpoint body: its kind is still ``checkpoint``."""


class ForgeAt(EvidenceCallback):
    """After the second step, emit a receipt of lit_psion's own ``kind`` (``checkpoint``, ``trainer_step`` or
    ``chain_seal``), as a careless or hostile callback would: one that claims what lit_psion did."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if (step := trainer.global_step) != 2:
            return
        forged = {
            "checkpoint": lambda: CheckpointReceipt(stage_id="s", step=step, checkpoint="step-999999",
                                                    manifest_digest=None, object_digest=None, writer="rank0",
                                                    durability="durable"),
            "trainer_step": lambda: TrainerStepReceipt(stage_id="s", step_in=step, step_out=step + 1,
                                                       batch_digest="0" * 64, cursor=None, loss=0.0, lr=0.0,
                                                       optimizer="adamw"),
            "chain_seal": lambda: ChainSealReceipt(stage_id="s", step=step, receipts=0),
            "checkpoint, by a subclass of its body": lambda: _OwnCheckpoint(
                stage_id="s", step=step, checkpoint="step-999999", manifest_digest=None, object_digest=None,
                writer="rank0", durability="durable"),
        }[self.kind]()  # fmt: skip
        self.emit(trainer, forged)


class RecordRankBatches(Callback):
    """Append ``{"step", "world_size", "ids", "global_ids", "cursor"}`` per training batch to ``{path}.rank{r}``.

    One file per rank, so a multi-process run's ranks never interleave their records.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        record = {"step": trainer.global_step, "world_size": trainer.world_size, "ids": batch["sample_ids"].tolist(),
                  "global_ids": batch["global_sample_ids"].tolist(), "cursor": list(batch["cursor"])}  # fmt: skip
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as handle:
            handle.write(json.dumps(record) + "\n")


class FullDiskAtStep(Callback):
    """From global step ``step`` on, every receipt append hits a full disk after writing half its line."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        from lit_psion.core.receipt_log import receipt_log

        log = receipt_log(trainer)
        if trainer.global_step + 1 != self.step or log is None:
            return
        log.append  # noqa: B018  (the handle is opened on first append; by this step it exists)
        log._handle = HalfThenFull(log._handle)


class HalfThenFull:
    """A file handle that writes half of what it is given, then reports a full disk."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def write(self, data: bytes) -> int:
        self.handle.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def forge_newest_checkpoint(run: Path, step: int, head: str) -> Path:
    """A copy of ``run``'s step-6 checkpoint claiming ``step`` and recording ``head``, with every digest made to
    match and the pointer moved to it: a forgery only the chain's anchors can refuse."""
    forged = run / "checkpoints" / f"step-{step:06d}"
    shutil.copytree(run / "checkpoints" / "step-000006", forged)
    manifest = read_json(forged / "manifest.json") | {"step": step, "receipts_head": head}
    atomic_write_json(forged / "manifest.json", manifest)
    digest = hashlib.sha256((forged / "manifest.json").read_bytes()).hexdigest()
    atomic_write_json(run / "checkpoints" / "pointer.json",
                      {"step": step, "checkpoint": forged.name, "manifest_sha256": digest})  # fmt: skip
    return forged


def head_of_step(run: Path, step: int) -> str:
    """The digest of the run's ``trainer_step`` receipt of ``step``."""
    for line in (run / "receipts.jsonl").read_text().splitlines():
        receipt = json.loads(line)
        if receipt["kind"] == "trainer_step" and receipt["body"]["step_out"] == step:
            return receipt["digest"]
    raise AssertionError(f"no receipt of step {step}")


class KillGroupAt(Callback):
    """On global rank 0, SIGKILL every process of this process group at the end of global step ``step``
    (a multi-process run lost at once: no rank runs any clean-up)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.killpg(os.getpgid(0), signal.SIGKILL)


class ShardDigestFailsAt(Callback):
    """On global rank ``rank``, hashing its checkpoint shard for step ``step`` hits an I/O error (a disk failing
    under one rank only)."""

    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lit_psion.strategies import sharded

        original, marker, rank = sharded.sha256_file, f".step-{self.step:06d}.tmp-", self.rank

        def failing(path: str | os.PathLike) -> str:
            if marker in str(path) and trainer.global_rank == rank and Path(path).name.endswith(".distcp"):
                raise OSError(5, "Input/output error")
            return original(path)

        sharded.sha256_file = failing


class StepReceiptsAtValidation(Callback):
    """Append ``[global_step, the steps receipts.jsonl holds]`` to a JSON list at each fit validation's first batch."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:  # fmt: skip
        if trainer.sanity_checking or batch_idx != 0:
            return
        from lit_psion.core import run_context

        lines = run_context(trainer).layout.receipts.read_text().splitlines()
        steps = [json.loads(line)["body"]["step_out"] for line in lines if '"trainer_step"' in line]
        seen = json.loads(Path(self.path).read_text()) if Path(self.path).exists() else []
        Path(self.path).write_text(json.dumps([*seen, [trainer.global_step, steps]]))
