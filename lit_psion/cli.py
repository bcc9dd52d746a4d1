"""``python -m lit_psion fit|validate|test|predict --config X.yaml``: LightningCLI plus the run directory.

The other subcommands (``receipts``, ``ckpt``, ``compare``, ``adapter``, ``events``, ``session``)
live in :mod:`lit_psion.commands` and are dispatched from one table there. Exit codes
(docs/cli.md): 0 success, 1 a bug of lit_psion's, 2 bad argument or config, 3 bad data, 4 bad or
missing checkpoint, 5 evidence that does not verify, 6 a write failed, 7 diverged, 8 locked, 10-12 a mesh's,
13 a window's state, 14 the user's own code raised, 130 interrupted, 143 SIGTERM.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

import lit_psion.strategies  # noqa: F401  (registers lit_psion's strategies by name)
from lit_psion.callbacks import (
    Dashboard,
    InterruptAtBoundary,
    PointerCheckpoint,
    ProgressBar,
    Receipts,
    RunDirectory,
    StopAgreement,
    Telemetry,
)
from lit_psion.callbacks.checkpoint import changed_model_settings, changed_on_resume, recorded_model_settings
from lit_psion.callbacks.stop import hand_sigterm_to_lightning, stop_before_training
from lit_psion.callbacks.wandb import WandbEvidence
from lit_psion.checkpoint_io import ManifestCheckpointIO
from lit_psion.commands import COMMANDS, run_command
from lit_psion.commands.argv_forms import as_list, gather_files, nulls_as_mappings
from lit_psion.commands.ckpt_paths import refuse_unusable_ckpt_path
from lit_psion.commands.fit_args import (
    DEFAULT_ROOT,
    check_callbacks,
    check_config_files,
    constructor_error,
    describe_ckpt_path,
    exit_inside_a_fit,
    expand_home,
    known_cause,
    plain_parse_error,
    refuse_lightning_optimizer_groups,
    setting_problems,
)
from lit_psion.commands.launch import (
    LAUNCHER_PID_ENV,
    follow_torchrun,
    forget_killed_ranks,
    is_launcher_rank_zero,
    leave_after_rank_zero,
    leave_together,
    tell_the_launcher,
)
from lit_psion.commands.lightning_words import quiet_lightning, raised_in_lightning, trainer_refusal
from lit_psion.commands.records import (
    TOOK_LATEST,
    changed_data_first,
    other_runs_of_the_root,
    record_past_users_on_exception,
    refuse_a_file_named,
    refuse_another_family,
    refuse_nothing_to_train,
    refuse_without_its_records,
    remove_if_unborn,
    say_a_bug,
    say_user_code_failed,
    what_remains,
    what_the_pause_kept,
)
from lit_psion.commands.roots import make_root, refuse_root_in_a_run, remove_if_empty
from lit_psion.commands.wandb_runs import place_wandb_runs
from lit_psion.consolidation import held_copy
from lit_psion.core import RunContext, RunLayout, new_run_id
from lit_psion.core.audit import hold_to_its_chain, lost_run_record, receipted_checkpoints, refuse_a_stray_checkpoint
from lit_psion.core.checkpoint import (
    MANIFEST_FILE,
    RejectedCheckpoint,
    VerifiedCheckpoint,
    as_receipted,
    belonging,
    resolve_checkpoint,
    verify_checkpoint,
)
from lit_psion.core.contracts import ReplayData, SignedModel, signed_settings
from lit_psion.core.errors import USER_CODE_EXIT, CheckpointError, ConfigError, LitPsionError, raised_in_user_code
from lit_psion.core.files import not_utf8
from lit_psion.core.lock import RunLock
from lit_psion.core.manifest import data_builds_another_model
from lit_psion.core.run import (
    RUN_ID_ENV,
    no_run_to_continue,
    other_runs,
    plain_run_id,
    read_latest,
    run_stage,
)
from lit_psion.loggers import RunCSVLogger
from lit_psion.profilers import QuietProfiler
from lit_psion.runs import add_data_facts_link
from lit_psion.strategies.elastic import clear_mesh_stop, leave_for_the_mesh, mesh_stop
from lit_psion.strategies.engines import refuse_another_layout, refuse_unrunnable_strategy, settings_follow_the_name

EXIT_INTERRUPTED = 130
FITTING: list[RunLayout] = []
"""The run this process's fit writes, once it is known."""
EXIT_SIGTERM = 143
CALLBACK_GROUPS = {"receipts": Receipts, "telemetry": Telemetry, "dashboard": Dashboard, "progress_bar": ProgressBar,
                   "checkpoint": PointerCheckpoint}  # fmt: skip
"""The config groups of lit_psion's always-on callbacks (``--checkpoint.every_n_train_steps`` ...), in hook
order: a step's receipt is appended before the checkpoint that records the chain's head is written."""


class _Parser(LightningArgumentParser):
    """Lightning's parser, named as the command is run: jsonargparse makes a parser of this class for each
    ``--model.help CLASS_PATH`` and ``--data.help CLASS_PATH`` without a name, and argparse's default is the
    script's file name (``__main__.py``)."""

    def __init__(self, *args: Any, prog: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, prog=prog or "python -m lit_psion", **kwargs)


class LitPsionCLI(LightningCLI):
    """LightningCLI that gives every fit a run directory and resolves ``--ckpt_path last`` by pointer.

    ``trainer.default_root_dir`` is the runs root; each fit writes ``<root>/<run_id>/`` as its
    :class:`~lit_psion.core.RunContext` says, which the trainer's RunDirectory callback carries.
    """

    def __init__(self, args: list[str] | dict[str, Any] | None = None, run: bool = True,
                 callbacks: list[Any] | None = None) -> None:  # fmt: skip
        """``callbacks`` go first in the trainer's list (before the configured ones: a benchmark's timer)."""
        self.extra_callbacks = list(callbacks or [])
        self.run_context: RunContext | None = None
        self.verified: VerifiedCheckpoint | None = None
        self.lock: RunLock | None = None
        """One writer per run: held from before a fit reads its run until the fit returns."""
        self._exported_run_id = self._exported_launcher_pid = False
        self._made_root: list[Path] = []  # taken back if the fit is refused before its run exists
        argv = sys.argv[1:] if args is None else args
        self._asked = argv[0] if isinstance(argv, list) and argv else None
        try:
            super().__init__(
                model_class=L.LightningModule,
                datamodule_class=L.LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_callback=None,  # RunDirectory writes config.yaml into the run directory
                trainer_defaults={"enable_checkpointing": False, "default_root_dir": DEFAULT_ROOT},
                parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False, "prog": "python -m lit_psion"},
                parser_class=_Parser,
                seed_everything_default=1337,
                auto_configure_optimizers=False,  # the model builds its optimizer (model.init_args.optimizer)
                args=args,
                run=run,
            )
        finally:
            if run and self.lock is not None:
                remove_if_unborn(self.lock.directory)
                self.lock.release()
            remove_if_empty(self._made_root)
            if self._exported_run_id:
                os.environ.pop(RUN_ID_ENV, None)
            if self._exported_launcher_pid:
                os.environ.pop(LAUNCHER_PID_ENV, None)

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        """Only the subcommand asked for, when one is: building each subcommand's parser costs ~0.3 s, and a
        command runs one (``--help`` or a mistyped name still sees all four)."""
        everything = LightningCLI.subcommands()
        return {self._asked: everything[self._asked]} if self._asked in everything else everything

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        parser.set_defaults(weights_only=True)  # what every load does (null, as older configs say, reads as true)
        for action in (a for a in parser._actions if a.dest == "weights_only"):  # not Lightning's advice to unpickle
            action.help = "always true: checkpoints hold tensors and plain data only (false is refused)"
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name, callback in CALLBACK_GROUPS.items():
            parser.add_lightning_class_args(callback, name)
        add_data_facts_link(parser)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then refuse a ``--ckpt_path`` that is not a checkpoint directory before anything reads it.

        LightningCLI would otherwise load a checkpoint *file* to apply its hyper-parameters to the config
        before lit_psion verified it: nothing from an unverified file may shape the run.
        """
        describe_ckpt_path(parser)
        if isinstance(args, dict | Namespace):
            super().parse_arguments(parser, args)
        else:
            argv = gather_files(sys.argv[1:] if args is None else list(args))
            argv = nulls_as_mappings(settings_follow_the_name(argv))
            check_config_files(argv)
            refuse_lightning_optimizer_groups(argv)
            self.config = parser.parse_args(argv)
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        if problems := setting_problems(config, self.config.get("subcommand")):
            raise ConfigError("; ".join(problems))
        refuse_unusable_ckpt_path(config.get("ckpt_path"), MANIFEST_FILE)

    def before_instantiate_classes(self) -> None:
        config = self._config()
        refuse_unrunnable_strategy(config.trainer)
        follow_torchrun(config.trainer)
        expand_home(config)
        root = Path(config.trainer.default_root_dir or DEFAULT_ROOT)
        if self.subcommand == "fit":
            refuse_root_in_a_run(root)
        if self.subcommand == "fit" and config.get("ckpt_path") != "last":  # last: checked once a run is found
            self._made_root = make_root(root)
        run_id, rejected = self._resolve_resume(config, root)
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            make_root(root)
        named = os.environ.get(RUN_ID_ENV) if self.subcommand == "fit" else None
        if by_name := named is not None and config.get("ckpt_path") is None:
            run_id, rejected = self._resume_named(config, RunLayout(root, plain_run_id(named)))
        if self.verified is not None:
            refuse_another_layout(self.verified, config.trainer.strategy, fitting=self.subcommand == "fit")
        # Without ckpt_path: `fit --config RUN/config.yaml` would silently start from the checkpoint it names.
        yaml = self._parser("fit").dump(config.clone().update(None, "ckpt_path"), skip_none=False) if (
            self.subcommand == "fit") else ""  # fmt: skip
        changed = changed_on_resume(RunLayout(root, run_id), yaml) if run_id is not None and yaml else ()
        if self.subcommand == "fit" and self.verified is not None:
            refuse_nothing_to_train(self.verified, config.trainer.get("max_steps"),
                                    RunLayout(root, run_id) if run_id is not None else None, changed, by_name)
        if "weights_only" in config:
            config.weights_only = True  # checkpoints hold tensors and plain data only: never unpickle code
        if self.subcommand in ("validate", "test", "predict") and config.get("ckpt_path") is None:
            print(f"lit_psion: warning: {self.subcommand} without --ckpt_path uses freshly initialised weights; "
                  "give --ckpt_path last or a checkpoint directory for a trained model", file=sys.stderr)  # fmt: skip
        if self.subcommand == "fit":
            layout = RunLayout(root, run_id or (named and plain_run_id(named)) or new_run_id())
            if named is None:  # the worker processes Lightning starts for this fit must plan the same run
                os.environ[RUN_ID_ENV], self._exported_run_id = layout.run_id, True
            if is_launcher_rank_zero() and LAUNCHER_PID_ENV not in os.environ:  # who they wait for (main())
                os.environ[LAUNCHER_PID_ENV], self._exported_launcher_pid = str(os.getpid()), True
            start = self.verified
            self.run_context = RunContext(layout=layout, resumed=run_id is not None, config_yaml=yaml,
                                          resume_from=start and start.path, resume_manifest=start and start.manifest,
                                          resume_manifest_sha256=start and start.manifest_sha256,
                                          rejected=rejected, changed_settings=changed)  # fmt: skip
            FITTING[:] = [layout]  # what an interrupt's line can tell of
            place_wandb_runs(as_list(config.trainer.logger), layout)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:  # data that fails to prepare on a resume: first, was it changed?
            if (refusal := changed_data_first(error, self.verified) if self.subcommand == "fit" else None) is None:
                raise
            raise refusal from error

    def _config(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config  # run=False: no subcommand

    def _resolve_resume(self, config: Namespace, root: Path) -> tuple[str | None, tuple[RejectedCheckpoint, ...]]:
        """Verify the checkpoint a fit resumes from (once: the load reuses the verified bytes)."""
        ckpt_path, rejected = config.get("ckpt_path"), []
        if ckpt_path is None:
            return None, ()
        if ckpt_path != "last":
            self.verified = _as_its_run_receipted(verify_checkpoint(ckpt_path))
            if (source := RunLayout.of(self.verified.path.resolve().parent.parent)).is_run():
                refuse_another_family(source, config, checkpoint=ckpt_path)
            return None, ()
        if (run_id := read_latest(root)) is None:
            raise no_run_to_continue(root, self.subcommand)
        layout = RunLayout(root, run_id)
        TOOK_LATEST[:] = [layout]
        if self.subcommand == "fit":
            self._lock(layout)  # before reading anything of the run: no reading a run mid-write
        refuse_another_family(layout, config)
        self.verified = resolve_checkpoint(layout, rejected, receipted=receipted_checkpoints(layout), resuming=True)
        refuse_without_its_records(layout, self.verified)
        config.ckpt_path = str(self.verified.path)
        return run_id, tuple(rejected)

    def _resume_named(self, config: Namespace, layout: RunLayout) -> tuple[str | None, tuple[RejectedCheckpoint, ...]]:
        """Resume the run ``LIT_PSION_RUN_ID`` names if it has a checkpoint (else it starts as new, unless its receipts
        record a checkpoint, now gone, or its seal: then it is refused as ``--ckpt_path last`` refuses it)."""
        refuse_a_file_named(layout)
        refuse_another_family(layout, config, named_by=RUN_ID_ENV)  # with a checkpoint or not: its config says
        receipted, rejected = receipted_checkpoints(layout), []
        if not (layout.pointer.is_file() or layout.checkpoint_dirs() or receipted.recorded or receipted.sealed):
            return None, ()
        self._lock(layout)
        self.verified = resolve_checkpoint(layout, rejected, receipted=receipted)
        refuse_without_its_records(layout, self.verified)
        config.ckpt_path = str(self.verified.path)
        return layout.run_id, tuple(rejected)

    def _lock(self, layout: RunLayout) -> None:
        if not layout.run_dir.is_dir():
            raise CheckpointError(f"--ckpt_path last: run {layout.run_id!r} named by {str(layout.latest)!r} does not "
                                  f"exist; give --ckpt_path a checkpoint directory{other_runs(layout.root)}")
        if is_launcher_rank_zero():  # the other ranks of the same fit run under rank 0's lock
            self.lock = RunLock(layout.run_dir, purpose=f"fit {layout.run_id}").acquire()

    def _run_subcommand(self, subcommand: str) -> None:
        sigint = signal.getsignal(signal.SIGINT)
        try:
            super()._run_subcommand(subcommand)
        except SystemExit as stop:
            # Lightning answers Ctrl-C with its on_exception hooks (the run is recorded paused), ignores SIGINT
            # and calls sys.exit(1): give the interrupt back, so it exits 130 like any other, never as our bug.
            if isinstance(stop.__context__, KeyboardInterrupt) and not isinstance(stop, SIGTERMException):
                signal.signal(signal.SIGINT, sigint)
                forget_killed_ranks(self.trainer)
                raise KeyboardInterrupt from None
            raise

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer with lit_psion's checkpoint IO, callbacks and (for fit) run directory and loggers."""
        config = {**self._instantiated("trainer"), **kwargs}
        callbacks = [*self.extra_callbacks, *as_list(config.pop("callbacks", None)), *self._group_callbacks(config)]
        plugins = as_list(config.get("plugins"))
        if custom := [type(p).__name__ for p in plugins if isinstance(p, CheckpointIO)]:
            raise ConfigError(f"trainer.plugins holds a CheckpointIO ({custom[0]}); lit_psion writes and verifies "
                              "checkpoints with its own ManifestCheckpointIO: remove it")  # fmt: skip
        if self.verified is not None and self.subcommand != "fit":  # fit checks at setup, with the data too
            _refuse_another_model(self.verified, self.model, self._parser(self.subcommand).dump(self._config()),
                                  self.datamodule)  # fmt: skip
        plugins.append(ManifestCheckpointIO(self.verified, resumes=self.subcommand == "fit"))
        self.verified = None  # the IO holds the verified bytes until it loads them, then lets them go
        loggers = as_list(config.get("logger")) if config.get("logger") not in (None, True, False) else []
        if self.run_context is not None:
            run = dataclasses.replace(self.run_context, stage=run_stage(self.model, callbacks))
            self.run_context = run
            wandb = [logger for logger in loggers if isinstance(logger, WandbLogger)]  # joined at training start
            loggers = [RunCSVLogger(run.layout.root, run.layout.run_id), *(lg for lg in loggers if lg not in wandb)]
            callbacks += [RunDirectory(run), StopAgreement(), InterruptAtBoundary()]
            callbacks.sort(key=lambda callback: isinstance(callback, Dashboard))  # draws the status RunDirectory wrote
            if wandb:  # first: the other callbacks' on_train_start see the W&B loggers
                callbacks.insert(0, WandbEvidence(wandb))
        elif config.get("logger") in (None, True):
            loggers = False  # validate/test/predict print their metrics; no stray lightning_logs/
        check_callbacks(callbacks, self.subcommand)
        record_past_users_on_exception(callbacks)
        try:
            trainer = self.trainer_class(**{**config, "plugins": plugins, "logger": loggers,
                                            "profiler": config.get("profiler") or QuietProfiler()}, callbacks=callbacks)
        except (MisconfigurationException, ModuleNotFoundError, TypeError, ValueError) as error:
            if not isinstance(error, MisconfigurationException) and not raised_in_lightning(error):
                raise  # not Lightning's account of an accelerator, devices or strategy it cannot use
            raise ConfigError(trainer_refusal(error)) from error
        if self.run_context is not None and self.lock is None and is_launcher_rank_zero():
            self.run_context.layout.run_dir.mkdir(exist_ok=True)  # a new run: locked before it is findable
            self._lock(self.run_context.layout)
        return trainer

    def _instantiated(self, key: str) -> dict[str, Any]:
        section = self.config_init[self.subcommand] if self.subcommand else self.config_init
        return dict(section.get(key) or {})

    def _group_callbacks(self, trainer_config: dict[str, Any]) -> list[Any]:
        section = self.config_init[self.subcommand] if self.subcommand else self.config_init
        callbacks = [section[name] for name in CALLBACK_GROUPS]
        if trainer_config.get("enable_progress_bar") is False:  # the user turned the bar off: drop ours
            callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
        return callbacks


def _as_its_run_receipted(checkpoint: VerifiedCheckpoint) -> VerifiedCheckpoint:
    """A checkpoint given by path, if it matches the durable receipt of the run it sits in (if any), whole."""
    layout = RunLayout.of(checkpoint.path.resolve().parent.parent)
    refuse_a_stray_checkpoint(checkpoint.path)
    if (lost := lost_run_record(checkpoint)) is not None:  # a new run or an evaluation may start from it: said
        print(f"lit_psion: warning: {lost}: it is held to its manifest alone, not to its run's receipts",
              file=sys.stderr)  # fmt: skip
    if layout.is_run() and checkpoint.path.resolve().parent == layout.checkpoints.resolve():  # (not a consolidated)
        belonging(checkpoint, layout)
    if not layout.is_run() or layout.run_id != checkpoint.manifest.run_id:
        return checkpoint
    if not layout.receipts.exists():  # a new run or an evaluation may start from it: said, not vouched for
        print(f"lit_psion: warning: {layout.receipts} is missing: {checkpoint.path.name} is held to its manifest "
              "alone, not to its run's receipts", file=sys.stderr)  # fmt: skip
        return checkpoint
    receipted = receipted_checkpoints(layout)
    hold_to_its_chain(layout)
    if (source := checkpoint.manifest.consolidated_from) is not None:  # a copy gathered from a sharded checkpoint
        own = layout.checkpoints / checkpoint.path.name  # the run's own, when a kill left its receipt uncounted
        if not any(manifest == source for manifest, _ in receipted.recorded.values()) and not ((own / MANIFEST_FILE)
                .is_file() and as_receipted(verify_checkpoint(own), receipted).manifest_sha256 == source):  # fmt: skip
            raise CheckpointError(f"checkpoint {str(checkpoint.path)!r} was consolidated from a checkpoint the run's "
                                  f"receipts do not record; move it aside, then consolidate again (ckpt consolidate "
                                  f"{layout.run_dir})")  # fmt: skip
        return held_copy(checkpoint, layout)  # the gathering of that checkpoint, compared
    return as_receipted(checkpoint, receipted)


def _refuse_another_model(checkpoint: VerifiedCheckpoint, model: L.LightningModule, config_yaml: str,
                          data: L.LightningDataModule | None) -> None:  # fmt: skip
    """validate/test/predict load weights only into the model that wrote them (same signature). Other data is
    fine to evaluate on, unless it builds another model (a tokenizer with another vocabulary): then the data is
    named, as a fit names it, rather than model settings that did not change."""
    recorded = checkpoint.manifest.model_signature
    signature = model.model_signature if isinstance(model, SignedModel) else None
    if None not in (recorded, signature) and recorded != signature:
        changed = changed_model_settings(checkpoint.path, config_yaml, signed_settings(model))
        trained_on = checkpoint.manifest.data_manifest_digest
        current = data.manifest if isinstance(data, ReplayData) else None
        known = recorded_model_settings(checkpoint.path) is not None  # else "" means "cannot tell", not "same"
        if not changed and known and None not in (trained_on, current) and trained_on != current.digest:
            raise data_builds_another_model(checkpoint, current)
        raise CheckpointError(f"checkpoint {checkpoint.path.name} was written by a model with signature "
                              f"{recorded[:16]}..., but this config builds {signature[:16]}...{changed}; evaluate it "
                              "with the run's own model settings")  # fmt: skip


def main(args: list[str] | None = None) -> int:
    """Run the CLI; a known error becomes one line on stderr and its exit code."""
    parent = os.getppid()
    code = _main(args)
    if code not in (0, 1, USER_CODE_EXIT):  # (a bug leaves at once: the other ranks may never reach it)
        leave_together(code)
        leave_after_rank_zero(parent)
    return code


def _main(args: list[str] | None) -> int:
    debug = bool(os.environ.get("LIT_PSION_DEBUG"))
    quiet_lightning()
    clear_mesh_stop()
    TOOK_LATEST.clear()  # (a test's earlier fit in this process)
    try:
        argv = sys.argv[1:] if args is None else args
        if argv and argv[0] in COMMANDS:
            return run_command(argv)  # the same path as ``python -m lit_psion NAME`` takes
        if odd := next((arg for arg in argv if not_utf8(arg)), None):
            raise ConfigError(f"argument {os.fsencode(odd)!r} is not UTF-8 text (the bytes of a name in another "
                              "encoding); rename the file, or give the value in UTF-8")  # fmt: skip
        if argv and argv[0] == "fit" and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, stop_before_training)  # (Lightning's own takes over at the fit's setup)
        try:
            LitPsionCLI(args=args)
        finally:
            hand_sigterm_to_lightning()
    except KeyboardInterrupt:
        print(f"lit_psion: interrupted{what_remains(FITTING[0]) if FITTING else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SIGTERMException:  # a SystemExit: caught before the clause below
        if (stop := mesh_stop()) is not None:
            return leave_for_the_mesh(stop)
        if int(os.environ.get("LOCAL_RANK") or 0) == 0:  # every rank of the node pauses at the same step
            said = f"paused by SIGTERM{what_the_pause_kept(FITTING[0])}" if FITTING and FITTING[0].is_run() else \
                "stopped by SIGTERM before a run started; nothing was written"  # fmt: skip
            print(f"lit_psion: {said}", file=sys.stderr)
        return EXIT_SIGTERM
    except SystemExit as stop:  # --help, or a command that printed its verdicts and chose its exit code
        if exit_inside_a_fit(stop):  # not a verdict: a fit's run is recorded failed, which exit 0 or 2 would belie
            if debug:
                raise
            return _failed(f"SystemExit({stop.code!r}) inside Lightning's trainer", stop)
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    except Exception as error:
        if debug:
            raise
        known = known_cause(error)
        if known is not None:
            line = _one_line(str(known) + other_runs_of_the_root(known, fitting=argv[:1] == ["fit"])
                             if isinstance(known, LitPsionError) else plain_parse_error(str(known), argv))
            if int(os.environ.get("LOCAL_RANK") or 0) == 0:  # the other ranks of a node reach the same verdict
                print(f"lit_psion: error: {line}", file=sys.stderr)
            code = known.exit_code if isinstance(known, LitPsionError) else ConfigError.exit_code
            tell_the_launcher(code, line)
            return code
        error = constructor_error(error)
        return _failed(f"{type(error).__name__}: {_one_line(str(error))}", error)
    return 0


def _failed(what: str, error: BaseException) -> int:
    """An error no known cause accounts for: the user's own code's (exit 14), else a bug of lit_psion's (exit 1)."""
    if raised_in_user_code(error):
        return say_user_code_failed(what, error, FITTING[0] if FITTING else None)
    return say_a_bug(what, error)


def _one_line(message: str) -> str:
    return " ".join(message.split())
