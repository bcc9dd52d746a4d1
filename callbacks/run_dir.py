"""The run directory (SPEC §2): run.json status, config.yaml, the data manifest, the end summary."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console
from typing_extensions import override

from lit_psion import __version__
from lit_psion.callbacks.checkpoint import POINTER_FILE
from lit_psion.callbacks.evidence import receipt_log
from lit_psion.core import RunRecord, RunStatus, atomic_write_json, atomic_write_text, sha256_bytes
from lit_psion.core.errors import failure_class
from lit_psion.core.run import write_latest
from lit_psion.loggers import RunCSVLogger


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunPlan:
    """Where a fit writes, decided by the CLI before anything is instantiated."""

    root: Path
    run_id: str
    resumed: bool
    config_yaml: str

    @property
    def run_dir(self) -> Path:
        return self.root / self.run_id


class RunDirectory(Callback):
    """Keep ``run.json`` true through the run's life and write the files that describe it."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.record: RunRecord | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        run_dir = self.plan.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.plan.resumed and (run_dir / "run.json").exists():
            self.record = RunRecord.load(run_dir)
            self.record.status = RunStatus.RECOVERING
        else:
            self.record = RunRecord(run_id=self.plan.run_id, status=RunStatus.INITIALIZING)
        self.record.attempts += 1
        self.record.code_version = __version__
        self.record.config_digest = sha256_bytes(self.plan.config_yaml.encode())
        self.record.model_signature = getattr(pl_module, "model_signature", None)
        atomic_write_text(run_dir / "config.yaml", self.plan.config_yaml)
        manifest = getattr(trainer.datamodule, "manifest", None)
        if manifest is not None:
            self.record.data_manifest_digest = manifest.digest
            atomic_write_json(run_dir / "data_manifest.json", {**manifest.to_json_dict(), "digest": manifest.digest})
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is not None and hasattr(tokenizer, "to_str"):  # so a fine-tune or predict can reuse it
            atomic_write_text(run_dir / "tokenizer.json", tokenizer.to_str())
        self.record.save(run_dir)
        write_latest(self.plan.root, self.plan.run_id)

    def _update(self, trainer: L.Trainer, status: RunStatus, failure: BaseException | None = None) -> None:
        if self.record is None:
            return
        self.record.status = status
        self.record.failure = f"{type(failure).__name__}: {failure}" if failure is not None else None
        self.record.failure_class = failure_class(failure) if failure is not None else None
        self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        log = receipt_log(trainer)
        self.record.global_step = trainer.global_step
        self.record.receipts_head = log.head if log is not None else self.record.receipts_head
        self.record.save(self.plan.run_dir)

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.record is not None:
            self._save(trainer)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.plan.resumed:
            for logger in trainer.loggers:
                if isinstance(logger, RunCSVLogger):
                    logger.experiment.drop_after(trainer.global_step)
        self._update(trainer, RunStatus.ACTIVE)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.interrupted:
            self._update(trainer, RunStatus.PAUSED)
        else:
            self._update(trainer, RunStatus.COMPLETED)
        if trainer.is_global_zero:
            self._print_summary(trainer)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt | SIGTERMException):
            self._update(trainer, RunStatus.PAUSED)
        else:
            self._update(trainer, RunStatus.FAILED, failure=exception)

    def _print_summary(self, trainer: L.Trainer) -> None:
        run_dir = self.plan.run_dir
        pointer = run_dir / "checkpoints" / POINTER_FILE
        checkpoint = json.loads(pointer.read_text())["checkpoint"] if pointer.exists() else "none"
        metrics = {k: f"{float(v):.4f}" for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        console = Console(highlight=False, soft_wrap=True)  # paths stay whole for copy and paste
        console.print(f"[bold]run[/bold] {self.plan.run_id} {self.record.status if self.record else ''} "
                      f"at step {trainer.global_step} {' '.join(f'{k}={v}' for k, v in metrics.items())}")  # fmt: skip
        console.print(f"  run directory  {run_dir}")
        console.print(f"  checkpoint     {run_dir / 'checkpoints' / checkpoint}")
        console.print(f"  metrics        {run_dir / 'metrics.csv'}")
        console.print(f"  resume with    --trainer.default_root_dir {self.plan.root} --ckpt_path last")
