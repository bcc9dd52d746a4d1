"""``python -m lit_psion fit|validate|test|predict --config X.yaml``: LightningCLI plus the run directory.

The other subcommands (``receipts``, ``ckpt``, ``compare``, ``adapter``, ``events``, ``session``)
live in :mod:`lit_psion.commands` and are dispatched from one table there. Exit codes
(docs/cli.md): 0 success, 1 unexpected error, 2 bad argument or config, 3 bad data, 4 bad or
missing checkpoint, 5 evidence that does not verify, 6 checkpoint write failed, 7 diverged,
130 interrupted, 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.utilities.exceptions import SIGTERMException

import lit_psion.strategies  # noqa: F401  (registers lit_psion's strategies by name)
from lit_psion.callbacks import Dashboard, PointerCheckpoint, ProgressBar, Receipts, RunDirectory, Telemetry
from lit_psion.callbacks.wandb import WandbEvidence
from lit_psion.checkpoint_io import ManifestCheckpointIO
from lit_psion.commands import COMMANDS
from lit_psion.core import RunContext, RunLayout, new_run_id
from lit_psion.core.checkpoint import RejectedCheckpoint, VerifiedCheckpoint, resolve_checkpoint, verify_checkpoint
from lit_psion.core.errors import CheckpointError, ConfigError, LitPsionError
from lit_psion.core.run import read_latest, run_stage
from lit_psion.loggers import RunCSVLogger
from lit_psion.runs import add_data_facts_link

DEFAULT_ROOT = "runs"
EXIT_INTERRUPTED = 130
EXIT_SIGTERM = 143
CALLBACK_GROUPS = {"checkpoint": PointerCheckpoint, "receipts": Receipts, "telemetry": Telemetry,
                   "dashboard": Dashboard, "progress_bar": ProgressBar}  # fmt: skip
"""The config groups of lit_psion's always-on callbacks (``--checkpoint.every_n_train_steps`` ...)."""


class LitPsionCLI(LightningCLI):
    """LightningCLI that gives every fit a run directory and resolves ``--ckpt_path last`` by pointer.

    ``trainer.default_root_dir`` is the runs root; each fit writes ``<root>/<run_id>/`` as its
    :class:`~lit_psion.core.RunContext` says, which the trainer's RunDirectory callback carries.
    """

    def __init__(
        self, args: list[str] | dict[str, Any] | None = None, run: bool = True, callbacks: list[Any] | None = None
    ) -> None:
        """``callbacks`` go first in the trainer's list (before the configured ones: a benchmark's timer)."""
        self.extra_callbacks = list(callbacks or [])
        self.run_context: RunContext | None = None
        self.verified: VerifiedCheckpoint | None = None
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,  # RunDirectory writes config.yaml into the run directory
            trainer_defaults={"enable_checkpointing": False, "default_root_dir": DEFAULT_ROOT},
            parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},
            seed_everything_default=1337,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name, callback in CALLBACK_GROUPS.items():
            parser.add_lightning_class_args(callback, name)
        add_data_facts_link(parser)

    def before_instantiate_classes(self) -> None:
        config = self._config()
        _check_strategy(config.trainer.strategy)
        root = Path(config.trainer.default_root_dir or DEFAULT_ROOT)
        run_id, rejected = self._resolve_resume(config, root)
        if "weights_only" in config:
            config.weights_only = True  # checkpoints hold tensors and plain data only: never unpickle code
        if self.subcommand == "fit":
            yaml = self._parser(self.subcommand).dump(config, skip_none=False)
            layout = RunLayout(root, run_id or new_run_id())
            resume_from = self.verified.path if self.verified is not None else None
            self.run_context = RunContext(layout=layout, resumed=run_id is not None, config_yaml=yaml,
                                          resume_from=resume_from, rejected=rejected)  # fmt: skip
            _place_wandb_runs(config.trainer.logger, layout)

    def _config(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config  # run=False: no subcommand

    def _resolve_resume(self, config: Namespace, root: Path) -> tuple[str | None, tuple[RejectedCheckpoint, ...]]:
        """Verify the checkpoint a fit resumes from (once: the load reuses the verified bytes)."""
        ckpt_path, rejected = config.get("ckpt_path"), []
        if ckpt_path is None:
            return None, ()
        if ckpt_path != "last":
            self.verified = verify_checkpoint(ckpt_path) if Path(ckpt_path).is_dir() else None
            return None, ()
        run_id = read_latest(root)
        if run_id is None:
            raise CheckpointError(f"--ckpt_path last: no run to continue in {str(root)!r}; run once without it")
        self.verified = resolve_checkpoint(RunLayout(root, run_id), rejected)
        config.ckpt_path = str(self.verified.path)
        return run_id, tuple(rejected)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer with lit_psion's checkpoint IO, callbacks and (for fit) run directory and loggers."""
        config = {**self._instantiated("trainer"), **kwargs}
        callbacks = [*self.extra_callbacks, *_as_list(config.pop("callbacks", None)), *self._group_callbacks(config)]
        plugins = [*_as_list(config.get("plugins")), ManifestCheckpointIO(self.verified)]
        loggers = _as_list(config.get("logger")) if config.get("logger") not in (None, True, False) else []
        if self.run_context is not None:
            run = dataclasses.replace(self.run_context, stage=run_stage(self.model, callbacks))
            self.run_context = run
            loggers = [RunCSVLogger(run.layout.root, run.layout.run_id), *loggers]
            callbacks.append(RunDirectory(run))
            if any(isinstance(logger, WandbLogger) for logger in loggers):
                callbacks.append(WandbEvidence())
        elif config.get("logger") in (None, True):
            loggers = False  # validate/test/predict print their metrics; no stray lightning_logs/
        return self.trainer_class(**{**config, "plugins": plugins, "logger": loggers}, callbacks=callbacks)

    def _instantiated(self, key: str) -> dict[str, Any]:
        section = self.config_init[self.subcommand] if self.subcommand else self.config_init
        return dict(section.get(key) or {})

    def _group_callbacks(self, trainer_config: dict[str, Any]) -> list[Any]:
        section = self.config_init[self.subcommand] if self.subcommand else self.config_init
        callbacks = [section[name] for name in CALLBACK_GROUPS]
        if trainer_config.get("enable_progress_bar") is False:  # the user turned the bar off: drop ours
            callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
        return callbacks


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _check_strategy(strategy: Any) -> None:
    """A strategy given by name must be one Lightning's StrategyRegistry knows (lit_psion registers its own)."""
    if not isinstance(strategy, str) or strategy == "auto" or strategy in StrategyRegistry:
        return
    raise ConfigError(f"--trainer.strategy {strategy!r} is not a registered strategy name; use one such as ddp, "
                      "transactional or transactional_ddp (all: lightning.pytorch.strategies.StrategyRegistry), or "
                      "give class_path and init_args in YAML")  # fmt: skip


def _place_wandb_runs(loggers: Any, layout: RunLayout) -> None:
    """Give each configured WandbLogger the run's id, name and directory; offline without an API key."""
    for entry in _as_list(loggers):
        if not isinstance(entry, Namespace) or not str(entry.get("class_path", "")).endswith("WandbLogger"):
            continue
        init_args = entry.init_args
        init_args.save_dir = str(layout.run_dir)
        for key in ("id", "name"):
            if init_args.get(key) is None:
                init_args[key] = layout.run_id
        if not _wandb_api_key() and os.environ.get("WANDB_MODE") != "online" and not init_args.get("offline"):
            init_args.offline = True
            print("lit_psion: no W&B API key: logging to W&B offline under the run directory (wandb sync to upload)",
                  file=sys.stderr)  # fmt: skip


def _wandb_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")


def main(args: list[str] | None = None) -> int:
    """Run the CLI; a known error becomes one line on stderr and its exit code."""
    debug = bool(os.environ.get("LIT_PSION_DEBUG"))
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)  # no "Seed set to" chatter
    try:
        argv = sys.argv[1:] if args is None else args
        command = COMMANDS.get(argv[0]) if argv else None
        if command is not None:
            command(argv)
        else:
            LitPsionCLI(args=args)
    except KeyboardInterrupt:
        print("lit_psion: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SIGTERMException:
        print("lit_psion: paused by SIGTERM after a checkpoint; continue with --ckpt_path last", file=sys.stderr)
        return EXIT_SIGTERM
    except Exception as error:
        if debug:
            raise
        known = _known_cause(error)
        if known is not None:
            print(f"lit_psion: error: {_one_line(str(known))}", file=sys.stderr)
            return known.exit_code if isinstance(known, LitPsionError) else ConfigError.exit_code
        print(f"lit_psion: unexpected error: {type(error).__name__}: {_one_line(str(error))} "
              "(set LIT_PSION_DEBUG=1 for the traceback)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _known_cause(error: BaseException) -> LitPsionError | ArgumentError | argparse.ArgumentError | None:
    """The lit_psion error (or argument error) behind ``error``, following the exception chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, LitPsionError | ArgumentError | argparse.ArgumentError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _one_line(message: str) -> str:
    return " ".join(message.split())
