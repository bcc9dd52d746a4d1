"""W&B run summary with lit_psion's evidence, so W&B's run comparison shows what produced each run.

Added by the CLI whenever a Lightning ``WandbLogger`` is configured (``configs/overlays/wandb.yaml``). It
logs the resolved config once, and puts the run id, the receipt-chain head, the config, data and
model digests and the pointed-to checkpoint's digests into the W&B summary once each checkpoint is
durable and receipted (its receipt inside the head) and when fit ends. W&B stays telemetry: receipts
and run.json remain the truth.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from omegaconf import OmegaConf
from typing_extensions import override

from lit_psion.checkpoint_io import MANIFEST, WEIGHTS
from lit_psion.core import read_json, run_context
from lit_psion.core.errors import ConfigError
from lit_psion.report import evidence

PREFIX = "lit_psion/"


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


class WandbEvidence(Callback):
    """Keep the W&B summary of each ``WandbLogger`` in step with the run's evidence.

    The CLI hands the W&B loggers here rather than to the Trainer, which opens every logger's experiment
    before its setup hooks: they join the trainer's loggers when training starts. So a fit refused before
    then (another model, other data, a damaged checkpoint) opens no W&B run under the run's id, and marks
    none failed while run.json, which the refusal left alone, says otherwise.
    """

    def __init__(self, loggers: list[WandbLogger] | None = None) -> None:
        self.loggers = list(loggers or ())
        self._summarised = False

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Join the trainer's loggers. The CLI puts this callback first, so every other callback's
        ``on_train_start`` (a user's evidence capture too) already sees the W&B loggers."""
        joined = [logger for logger in self.loggers if logger not in trainer.loggers]
        trainer.loggers = [*trainer.loggers, *joined]
        data = trainer.datamodule
        hparams = {**(dict(data.hparams) if data is not None else {}), **dict(pl_module.hparams)}
        config = run_context(trainer).config_yaml  # what RunDirectory writes as config.yaml, later in this hook
        try:
            for logger in joined if hparams else ():  # what Lightning logs to its loggers before training starts
                logger.log_hyperparams(hparams)
            for logger in wandb_loggers(trainer):
                if config is not None:
                    logger.log_hyperparams(OmegaConf.to_container(OmegaConf.create(config)))
        except Exception as error:  # W&B's refusal of a setting (an entity, a project, a key) as it opens the run
            from wandb.errors import Error  # imported by now: the logger has opened W&B

            if not isinstance(error, Error):
                raise
            raise ConfigError(f"trainer.logger (WandbLogger): W&B refuses it: {error}") from error
        self._summarised = False

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, index: int) -> None:
        if not self._summarised:  # run.json is written by the time the first step starts
            self._summarised = True
            self._update_or_warn(trainer)

    def on_checkpoint_receipted(self, trainer: L.Trainer) -> None:
        """A checkpoint is durable, pointed at and receipted: the summary's head covers its receipt."""
        self._update_or_warn(trainer)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._update_or_warn(trainer)

    def on_run_recorded(self, trainer: L.Trainer) -> None:
        """run.json holds the fit's final status (``RunDirectory`` tells this after the receipts and checkpoint of
        a failure or a pause are written, which an update from this callback's own ``on_exception``, run first,
        missed). A resume already at max_steps skipped ``on_train_start``: the loggers join here."""
        if any(logger not in trainer.loggers for logger in self.loggers):
            self.on_train_start(trainer, trainer.lightning_module)
        self._update_or_warn(trainer)

    def _update_or_warn(self, trainer: L.Trainer, status: str | None = None) -> None:
        """W&B is telemetry: this callback runs first, and a summary it cannot write (W&B's network, a record it
        cannot read) must not keep the receipts, the checkpoint and run.json from theirs."""
        try:
            self.update(trainer, status)
        except Exception as error:
            print(f"lit_psion: warning: the W&B summary was not updated ({type(error).__name__}: {error})",
                  file=sys.stderr)  # fmt: skip

    def update(self, trainer: L.Trainer, status: str | None = None) -> dict[str, Any]:
        layout = run_context(trainer).layout
        if not trainer.is_global_zero or not layout.is_run():
            return {}
        facts = evidence(layout.run_dir)
        if status is not None:
            facts["status"] = status
        if facts["checkpoint"]:
            manifest = layout.checkpoints / facts["checkpoint"] / MANIFEST
            if manifest.is_file():
                weights = read_json(manifest)["files"].get(WEIGHTS)  # none in a sharded checkpoint
                facts["checkpoint_weights_sha256"] = weights["sha256"] if weights else None
        summary = {PREFIX + key: value for key, value in facts.items() if value is not None}
        for logger in wandb_loggers(trainer):
            logger.experiment.summary.update(summary)
        return summary
