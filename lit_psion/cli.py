"""``python -m lit_psion fit|validate|test|predict --config X.yaml``: LightningCLI plus the run directory.

Also ``receipts verify RUN_DIR``, ``ckpt verify RUN_DIR`` and ``compare RUN_DIR [RUN_DIR ...]``.
Exit codes (docs/cli.md): 0 success, 1 unexpected error, 2 bad argument or config, 3 bad data,
4 bad or missing checkpoint, 5 evidence that does not verify, 6 checkpoint write failed,
130 interrupted, 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console
from rich.table import Column, Table

from lit_psion.callbacks import (
    Dashboard,
    GenerateSample,
    PointerCheckpoint,
    ProgressBar,
    Receipts,
    RunDirectory,
    RunPlan,
    Telemetry,
    resolve_checkpoint,
)
from lit_psion.callbacks.checkpoint_io import ManifestCheckpointIO
from lit_psion.callbacks.evidence import RECEIPTS_FILE
from lit_psion.callbacks.wandb import WandbEvidence
from lit_psion.core import new_run_id
from lit_psion.core.errors import CheckpointError, ConfigError, EvidenceError, LitPsionError
from lit_psion.core.receipts import verify_log
from lit_psion.core.run import RUN_FILE, RunRecord, read_latest
from lit_psion.loggers import RunCSVLogger
from lit_psion.report import compare

DEFAULT_ROOT = "runs"
EXIT_INTERRUPTED = 130
EXIT_SIGTERM = 143


class LitPsionCLI(LightningCLI):
    """LightningCLI that gives every fit a run directory and resolves ``--ckpt_path last`` by pointer."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        self.plan: RunPlan | None = None
        self.rejected_checkpoints: list[tuple[Path, str]] = []
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
        parser.add_lightning_class_args(PointerCheckpoint, "checkpoint")
        parser.add_lightning_class_args(Receipts, "receipts")
        parser.add_lightning_class_args(Telemetry, "telemetry")
        parser.add_lightning_class_args(Dashboard, "dashboard")
        parser.add_lightning_class_args(GenerateSample, "sample")
        parser.add_lightning_class_args(ProgressBar, "progress_bar")
        parser.link_arguments("data.vocab_size", "model.init_args.decoder.vocab_size", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config  # run=False: no subcommand
        config.trainer.strategy = _strategy_class(config.trainer.strategy)
        _link_block_size(config)
        root = Path(config.trainer.default_root_dir or DEFAULT_ROOT)
        ckpt_path = config.get("ckpt_path")
        run_id = None
        if ckpt_path == "last":
            run_id = read_latest(root)
            if run_id is None:
                raise CheckpointError(f"--ckpt_path last: no run to continue in {str(root)!r}; run once without it")
            config.ckpt_path = str(resolve_checkpoint(root / run_id, self.rejected_checkpoints))
        if "weights_only" in config:
            config.weights_only = True  # checkpoints hold tensors and plain data only: never unpickle code
        if self.subcommand == "fit":
            yaml = self._parser(self.subcommand).dump(config, skip_none=False)
            self.plan = RunPlan(root=root, run_id=run_id or new_run_id(), resumed=run_id is not None, config_yaml=yaml)
            _place_wandb_runs(config.trainer.logger, self.plan)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> L.Trainer:
        if config.get("enable_progress_bar") is False:  # the user turned the bar off: drop ours, not fail
            callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
        plugins = config.get("plugins") or []
        config["plugins"] = [*(plugins if isinstance(plugins, list) else [plugins]), ManifestCheckpointIO()]
        if self.plan is not None:
            loggers = config.get("logger")
            loggers = [] if loggers in (None, True, False) else loggers if isinstance(loggers, list) else [loggers]
            csv = RunCSVLogger(self.plan.root, self.plan.run_id)
            config["logger"] = [csv, *loggers]
            config["default_root_dir"] = str(self.plan.run_dir)
            callbacks = [*callbacks, RunDirectory(self.plan)]
            if any(isinstance(logger, WandbLogger) for logger in config["logger"]):
                callbacks.append(WandbEvidence())
            for callback in callbacks:
                if isinstance(callback, Receipts):
                    callback.rejected = list(self.rejected_checkpoints)
        elif config.get("logger") in (None, True):
            config["logger"] = False  # validate/test/predict print their metrics; no stray lightning_logs/
        return super()._instantiate_trainer(config, callbacks)


def _link_block_size(config: Any) -> None:
    """The model's context is the data's ``block_size`` (set here: jsonargparse's parse-time link does
    not reach a field of a dataclass inside a subclass's init args)."""
    data = config.get("data")
    model = config.get("model")
    block_size = data.get("init_args", {}).get("block_size") if data is not None else None
    decoder = model.get("init_args", {}).get("decoder") if model is not None else None
    if block_size is not None and decoder is not None:
        decoder.block_size = block_size


def _strategy_class(strategy: Any) -> Any:
    """``--trainer.strategy pkg.Class`` given as a plain string means that class with its defaults."""
    if not isinstance(strategy, str) or "." not in strategy:
        return strategy  # a Lightning registry name ("ddp") or an already-parsed class_path
    module_name, _, name = strategy.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"--trainer.strategy {strategy!r} cannot be imported ({error}); give a Lightning strategy name "
            "such as 'ddp' or a class path such as lit_psion.strategies.TransactionalStrategy"
        ) from error
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"--trainer.strategy {strategy!r} is not a lightning.pytorch.strategies.Strategy subclass")
    return Namespace(class_path=strategy, init_args=Namespace())


def _place_wandb_runs(loggers: Any, plan: RunPlan) -> None:
    """Give each configured WandbLogger the run's id, name and directory; go offline without an API key."""
    entries = loggers if isinstance(loggers, list) else [loggers]
    for entry in entries:
        if not str(getattr(entry, "class_path", "")).endswith("WandbLogger"):
            continue
        init_args = entry.init_args
        init_args.save_dir = str(plan.run_dir)
        for key in ("id", "name"):
            if init_args.get(key) is None:
                init_args[key] = plan.run_id
        if not _wandb_api_key() and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"
            print("lit_psion: no W&B API key: logging to W&B offline under the run directory (wandb sync to upload)",
                  file=sys.stderr)  # fmt: skip


def _wandb_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")


def verify_command(args: list[str]) -> None:
    """``receipts verify RUN_DIR`` and ``ckpt verify RUN_DIR``: check evidence, print one line."""
    parser = argparse.ArgumentParser(prog="python -m lit_psion", exit_on_error=False)
    parser.add_argument("group", choices=["receipts", "ckpt"])
    parser.add_argument("action", choices=["verify"])
    parser.add_argument("run_dir", type=Path)
    parsed = parser.parse_args(args)
    if not (parsed.run_dir / RUN_FILE).is_file():
        raise ConfigError(f"{str(parsed.run_dir)!r} is not a run directory (no {RUN_FILE}); give <root>/<run_id>")
    if parsed.group == "ckpt":
        path = resolve_checkpoint(parsed.run_dir)
        print(f"ok: {path} matches its manifest")
        return
    record = RunRecord.load(parsed.run_dir)
    result = verify_log(parsed.run_dir / RECEIPTS_FILE, expected_head=record.receipts_head)
    if not result.ok:
        raise EvidenceError(f"{parsed.run_dir / RECEIPTS_FILE}: {result.describe()}")
    print(f"ok: {result.describe()}")


def compare_command(args: list[str]) -> None:
    """``compare RUN_DIR [RUN_DIR ...] [--out DIR]``: config diff, final metrics, evidence, overlay plots."""
    parser = argparse.ArgumentParser(prog="python -m lit_psion compare", exit_on_error=False)
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, default=Path("compare"), help="where the PNGs and index.html go")
    parsed = parser.parse_args(args)
    result = compare(parsed.run_dirs, parsed.out)
    labels = result["labels"]
    console = Console(highlight=False, soft_wrap=True)
    diff = Table(Column("config key", overflow="fold"), *labels, title="config differences")
    for key, values in result["config_diff"]:
        diff.add_row(key, *(str(v) for v in values))
    console.print(diff if result["config_diff"] else "configs are identical")
    finals = Table("metric", *labels, title="final metrics")
    for key in result["metrics"]:
        finals.add_row(key, *(_format(result["final"][label].get(key)) for label in labels))
    for field in ("status", "global_step", "receipts_head", "checkpoint"):
        finals.add_row(field, *(str(facts[field])[:16] for facts in result["evidence"]))
    console.print(finals)
    console.print(f"overlay plots: {result['page']}")


def _format(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def main(args: list[str] | None = None) -> int:
    """Run the CLI; a known error becomes one line on stderr and its exit code."""
    debug = bool(os.environ.get("LIT_PSION_DEBUG"))
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)  # no "Seed set to" chatter
    try:
        argv = sys.argv[1:] if args is None else args
        if argv[:1] in (["receipts"], ["ckpt"]):
            verify_command(argv)
        elif argv[:1] == ["compare"]:
            compare_command(argv[1:])
        elif argv[:1] == ["adapter"]:
            from lit_psion.adapters import adapter_command  # imported on use

            adapter_command(argv[1:])
        elif argv[:1] == ["events"]:
            from lit_psion.events.predict import events_command  # imported on use

            events_command(argv[1:])
        elif argv[:1] == ["session"]:
            from lit_psion.sessions.cli import session_main  # imported on use: fit does not need it

            session_main(argv[1:])
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
