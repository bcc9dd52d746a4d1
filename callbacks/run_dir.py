"""The run directory (SPEC §2): run.json status, config.yaml, the data manifest, the end summary."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lit_psion import __version__
from lit_psion.callbacks.checkpoint import (
    PointerCheckpoint,
    data_settings,
    refuse_unbound,
    resume_warning,
    shared_settings,
    trainer_settings,
)
from lit_psion.callbacks.evidence import data_manifest_digest, signature_of
from lit_psion.callbacks.optimizer_settings import honour_optimizer_settings
from lit_psion.core import RunContext, RunRecord, RunStatus, atomic_write_json, atomic_write_text, sha256_bytes
from lit_psion.core.contracts import RecordWatcher, ReplayData, SkipListing, TokenizedData
from lit_psion.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    LitPsionError,
    MembershipChanged,
    failure_class,
)
from lit_psion.core.layout import RunLayout
from lit_psion.core.membership import NODE_ID_ENV, NODE_MARKERS_ENV, last_receipted, mismatched_joiners
from lit_psion.core.pointer import read_pointer
from lit_psion.core.receipt_log import receipt_log
from lit_psion.core.run import read_latest, write_latest
from lit_psion.core.skip_list import SkipList, check_skip_list, replayed_entries
from lit_psion.loggers import RunCSVLogger
from lit_psion.report import PipedConsole


class RunDirectory(Callback):
    """Keep ``run.json`` true through the run's life and write the files that describe it.

    Args:
        run_context: Where the fit writes and what it resumes; other callbacks and strategies read it
            through :func:`lit_psion.core.run_context`.
    """

    def __init__(self, run_context: RunContext) -> None:
        self.run_context = run_context
        self.record: RunRecord | None = None
        self._completed = False  # this fit recorded its run completed (an exception after that changes nothing)
        self._trained = False  # on_train_start ran (Lightning skips it for a resume already at max_steps)
        self._validated_at: int | None = None  # the step of this fit's last validation (the summary's scores)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._completed = self._trained = False
        self.record = None  # (this fit's, from on_train_start)
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                logger.watch(trainer)
        if stage == "fit" and trainer.world_size > 1:
            self._follow_rank_zero(trainer)
        if stage == "fit" and self.run_context.resumed:
            _refuse_training_on_skip_listed(self.run_context, trainer.strategy)

    def _begin(self, trainer: L.Trainer, pl_module: L.LightningModule) -> RunRecord:
        """The run's record, once the data description it names is written (and the root's latest run).

        Not at setup: a fit refused while Lightning sets up (a strategy that cannot shard the model, an
        optimizer it cannot run, a checkpoint that does not load) has trained nothing, so a resumed run keeps
        its run.json and config.yaml as they were, and a new run leaves no directory behind.
        """
        run, layout = self.run_context, self.run_context.layout
        layout.run_dir.mkdir(parents=True, exist_ok=True)
        earlier = None if run.resumed else _earlier_attempt(layout)  # LIT_PSION_RUN_ID: no checkpoint to resume
        if run.resumed and layout.is_run():
            record = RunRecord.load(layout)
        else:
            record = RunRecord(run_id=layout.run_id, status=RunStatus.INITIALIZING)
            record.attempts = earlier.attempts if earlier is not None else 0
        record.stage = run.stage
        record.attempts += 1
        record.code_version = __version__
        record.model_signature = signature_of(pl_module)
        if run.config_yaml is not None:
            record.config_digest = sha256_bytes(run.config_yaml.encode())
        if run.resumed:  # its files are the earlier attempts': a failure from here on is recorded (a new run's is not
            self.record = record  # until the files its run.json names are written: see on_train_start)
        self._describe_data(trainer.datamodule, record)
        if earlier is not None:
            then, now = earlier.data_manifest_digest, record.data_manifest_digest
            data = (f", on other data than then (data manifest {then[:16]}... -> {now[:16]}...)"
                    if isinstance(then, str) and isinstance(now, str) and then != now else "")
            print(f"lit_psion: note: run {layout.run_id} starts again from step 0 (attempt {record.attempts}; its "
                  f"earlier attempt left no checkpoint){data}: its metrics.csv rows are dropped, its receipts record "
                  "both attempts", file=sys.stderr)  # fmt: skip
        if not run.resumed:
            _tell_of_an_unfinished_run(layout)
        write_latest(layout.root, layout.run_id)
        return record

    def _follow_rank_zero(self, trainer: L.Trainer) -> None:
        """Every rank trains rank 0's run, from rank 0's checkpoint.

        Processes torchrun starts without ``LIT_PSION_RUN_ID`` each planned their own run id; what other ranks
        read back by run (a transactional strategy's skip list) must be rank 0's. Callbacks' setup runs before
        the strategy's, so the strategy reads the run adopted here. A rank that would start from another
        checkpoint (another ``--ckpt_path`` on its node, or a runs directory that is not the one rank 0 sees)
        would train on other optimizer state and data: every rank refuses, before anything is written. So does
        a rank given other model, optimizer, data or step settings (:func:`shared_settings`, :func:`data_settings`),
        which would drift or train other batches.

        Under ``mesh launch`` the nodes of the last membership epoch are the reference instead: a node that
        joins unlike them is turned away alone (its ``mesh launch`` stops with the refusal), and the others
        leave with ``membership_changed`` to re-form without it.
        """
        run, layout = self.run_context, self.run_context.layout
        start = str(run.resume_from) if run.resume_from is not None else "no checkpoint (a new run)"
        mesh = os.environ.get(NODE_MARKERS_ENV) and os.environ.get(NODE_ID_ENV)
        mine = {"node": os.environ.get(NODE_ID_ENV) or f"rank {trainer.global_rank}", "run_id": layout.run_id,
                "digest": run.resume_manifest_sha256, "start": start,
                "settings": {**shared_settings(run.config_yaml), **data_settings(run.config_yaml),
                             **trainer_settings(trainer),
                             "model signature": signature_of(trainer.lightning_module),
                             DATA: data_manifest_digest(trainer)},
                "incumbents": _incumbents(layout) if mesh else []}  # fmt: skip
        views: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(views, mine)
        reference, whose, where = views[0], "rank 0's", "rank 0"
        if mesh and any((v["digest"], v["settings"]) != (reference["digest"], reference["settings"]) for v in views):
            trains = [(v["node"], (v["digest"], v["settings"])) for v in views]
            # What any rank read: a joiner on other storage (or another run id) reads none, whatever its rank.
            away = mismatched_joiners(trains, {node for v in views for node in v["incumbents"]})
            if away:
                if mine["node"] not in away:
                    raise MembershipChanged(f"node {', '.join(sorted(away))} joined run {layout.run_id} unlike its "
                                            "nodes and is turned away; the mesh re-forms without it")  # fmt: skip
                reference, whose, where = next(v for v in views if v["node"] not in away), "the mesh's", "the mesh"
        if mine["digest"] != reference["digest"] or any(v["digest"] != reference["digest"] for v in views):
            theirs = "" if mine["digest"] == reference["digest"] else f"; {_name(mine, trainer)} from {start}"
            raise CheckpointError(f"the ranks do not all start from {whose} checkpoint, {reference['start']}{theirs}; "
                                  "give every node the same --ckpt_path, and with 'last' the same runs directory "
                                  "(storage every node sees)")  # fmt: skip
        if any(v["settings"] != reference["settings"] for v in views):
            ours, theirs = mine["settings"], reference["settings"]
            keys = sorted(key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key))
            if keys == [DATA]:
                raise DataError(f"the ranks do not all train on {whose} data (data manifest {str(theirs[DATA])[:16]}"
                                f"... on {where}, {str(ours[DATA])[:16]}... on {_name(mine, trainer)}); give every "
                                "node the same data files and settings")  # fmt: skip
            shown = "; ".join(f"{key.replace('.init_args.', '.')}: {theirs.get(key)!r} on {where}, "
                              f"{ours.get(key)!r} on {_name(mine, trainer)}" for key in keys[:3])  # fmt: skip
            raise ConfigError(f"the ranks do not all train with {whose} settings ({shown or 'another rank differs'}); "
                              "give every node the same model, optimizer and trainer settings")  # fmt: skip
        if reference["run_id"] != layout.run_id:
            self.run_context = dataclasses.replace(run, layout=RunLayout(layout.root, reference["run_id"]))
        # Only now, every rank agreeing: a check one rank failed alone would leave the others in a collective.
        refuse_unbound(self.run_context, trainer, trainer.lightning_module)

    checks_the_ranks_first = True
    """:class:`PointerCheckpoint` leaves its checkpoint checks of a multi-process fit to :meth:`_follow_rank_zero`."""

    def _describe_data(self, data: L.LightningDataModule | None, record: RunRecord) -> None:
        layout = self.run_context.layout
        manifest = data.manifest if isinstance(data, ReplayData) else None
        if not isinstance(data, ReplayData):
            given = f"data module {type(data).__name__}" if data is not None else "dataloaders given directly"
            print(f"lit_psion: warning: the fit's {given} is not a ReplayDataModule: its data is not pinned by digest "
                  "(no data_manifest.json) and a resume does not replay its batches exactly; build it on "
                  "lit_psion.datamodules.ReplayDataModule (docs/architecture.md)", file=sys.stderr)  # fmt: skip
        if manifest is not None:
            record.data_manifest_digest = manifest.digest
            atomic_write_json(layout.data_manifest, {**manifest.to_json_dict(), "digest": manifest.digest})
        if isinstance(data, TokenizedData) and (tokenizer := data.tokenizer_json()) is not None:
            atomic_write_text(layout.tokenizer, tokenizer)  # so a fine-tune or predict can reuse it

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
        self.record.save(self.run_context.layout)

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        ours = [callback for callback in trainer.callbacks if isinstance(callback, PointerCheckpoint)]
        if trainer.state.fn == "fit" and trainer.state.status == "running" and ours and not ours[0].writing:
            raise ConfigError("trainer.save_checkpoint was called during the fit by something other than lit_psion's "
                              "checkpointing (a callback or the model): a checkpoint no receipt records is trusted by "
                              "no resume, doctor or ckpt verify; set --checkpoint.every_n_train_steps, or save your "
                              "own file with torch.save after the fit")  # fmt: skip
        if self.record is not None:
            self._save(trainer)

    def on_checkpoint_receipted(self, trainer: L.Trainer) -> None:
        """run.json's head takes the checkpoint's durable receipt: without it, that receipt (the digests of the
        checkpoint a resume loads) and the steps after it would be anchored by nothing outside the log."""
        if self.record is not None:
            self._save(trainer)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_at = trainer.global_step

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trained = True
        if trainer.ckpt_path is not None:  # restored by now; every rank's optimizer takes the config's settings
            honour_optimizer_settings(trainer, pl_module)
        record = self._begin(trainer, pl_module) if trainer.is_global_zero else None
        if trainer.is_global_zero and (warning := resume_warning(
                self.run_context.layout.run_id, self.run_context.changed_settings, self.run_context.config_yaml)):
            print(warning, file=sys.stderr)  # now that the resume was accepted and trains
        if trainer.is_global_zero:  # (another rank's logger writes nothing)
            for logger in trainer.loggers:  # (a run started again in place drops every row of its earlier attempt)
                if isinstance(logger, RunCSVLogger):
                    last = logger.experiment.drop_after(trainer.global_step)
                    behind = (last or 0) + max(trainer.log_every_n_steps, 1) < trainer.global_step
                    if self.run_context.resumed and behind:
                        print(f"lit_psion: warning: {logger.experiment.metrics_file_path} holds rows up to step "
                              f"{last or 0}, the checkpoint is at step {trainer.global_step}: the rows between are "
                              "not in it (rows not yet flushed when a run is killed are lost, as are rows cut from "
                              "the file); each step's loss is in the receipts; training goes on",
                              file=sys.stderr)  # fmt: skip
        config = self.run_context.config_yaml if trainer.is_global_zero else None
        new = config is not None and not self.run_context.layout.config.exists()
        if new:  # before the run.json that records its digest: a Ctrl-C between them left a run without its config
            atomic_write_text(self.run_context.layout.config, config)
        # A new run's record only now, with every file it names written: a Ctrl-C before this left a run.json naming a
        # config.yaml and a data manifest never written (an interrupt saves the record held), for doctor to ask after.
        self.record = record
        self._update(trainer, RunStatus.ACTIVE)
        if config is not None and not new:
            # After run.json: a crash in between leaves the previous config.yaml, whose digest the chain's earlier
            # training_run receipts hold (a resume accepts that; a config.yaml no receipt knows is refused).
            atomic_write_text(self.run_context.layout.config, config)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._trained and trainer.ckpt_path is not None:  # a resume at max_steps: training was skipped
            self.on_train_start(trainer, pl_module)  # (the run's unfinished end, which this fit completes)
        if trainer.interrupted:
            self._update(trainer, RunStatus.PAUSED)
        else:
            self._update(trainer, RunStatus.COMPLETED)
            self._completed = True
        self._tell_watchers(trainer)
        if trainer.is_global_zero:
            self._print_summary(trainer)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._completed:
            return  # raised after this fit completed the run (a teardown): its record, seal and checkpoint stand
        if isinstance(exception, KeyboardInterrupt | SIGTERMException):
            self._update(trainer, RunStatus.PAUSED)
        else:
            self._update(trainer, RunStatus.FAILED, failure=exception)
        if self._trained:  # a fit refused before training opens nothing (no W&B run under the run's id)
            self._tell_watchers(trainer)

    @staticmethod
    def _tell_watchers(trainer: L.Trainer) -> None:
        """run.json now says how the fit ended (the CLI puts this callback after those that write receipts)."""
        for callback in trainer.callbacks:
            if isinstance(callback, RecordWatcher):
                callback.on_run_recorded(trainer)

    def _print_summary(self, trainer: L.Trainer) -> None:
        layout = self.run_context.layout
        try:
            pointer = read_pointer(layout)
        except CheckpointError:
            pointer = None
        checkpoint = layout.checkpoints / pointer.checkpoint if pointer is not None else "none"
        metrics = {k: f"{float(v):.5g}" for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics and self._validated_at not in (None, trainer.global_step):  # (the scores are that validation's)
            metrics["validated at"] = f"step {self._validated_at}"
        console = PipedConsole(highlight=False, soft_wrap=True)  # paths stay whole for copy and paste
        said = [layout.run_id, str(self.record.status) if self.record else "", f"at step {trainer.global_step}",
                *(f"{k}={v}" if k.startswith("val/") else f"({k} {v})" for k, v in metrics.items())]  # fmt: skip
        console.print(f"[bold]run[/bold] {' '.join(part for part in said if part)}")
        console.print(f"  run directory  {layout.run_dir}")
        console.print(f"  checkpoint     {checkpoint}")
        rows = layout.metrics.is_file() or any(isinstance(logger, RunCSVLogger) for logger in trainer.loggers)
        console.print(f"  metrics        {layout.metrics if rows else 'none (no logger)'}")  # (last rows: teardown)
        console.print(f"  resume with    {layout.resume_flags}")


DATA = "data manifest"


def _incumbents(layout: RunLayout) -> list[str]:
    """The nodes that trained the run's last membership epoch, as its receipt chain records them (membership.json
    has no digest: an edited one would choose who is turned away); none for a new run or an unreadable chain."""
    try:
        last = last_receipted(layout.receipts, layout.run_id)
    except (LitPsionError, OSError, ValueError):
        return []
    return list(last.training) if last is not None else []


def _name(view: dict[str, Any], trainer: L.Trainer) -> str:
    node = view["node"]
    return node if node.startswith("rank ") else f"rank {trainer.global_rank} (node {node})"


def _earlier_attempt(layout: RunLayout) -> RunRecord | None:
    """The record of the run a fit starts again in place (``LIT_PSION_RUN_ID`` naming a run with no checkpoint), if
    an earlier attempt left one."""
    if not layout.is_run():
        return None
    with contextlib.suppress(LitPsionError, OSError, ValueError):
        return RunRecord.load(layout)
    return None


def _tell_of_an_unfinished_run(layout: RunLayout) -> None:
    """A new run in a root whose latest run stopped unfinished with a checkpoint: ``--ckpt_path last`` will follow
    the new one from now on, so say how the other is continued."""
    with contextlib.suppress(LitPsionError, OSError, ValueError):
        latest = read_latest(layout.root)
        previous = RunLayout(layout.root, latest) if latest and latest != layout.run_id else None
        if previous is not None and previous.pointer.is_file():
            record = RunRecord.load(previous)
            if record.status in (RunStatus.PAUSED, RunStatus.ACTIVE, RunStatus.FAILED):
                print(f"lit_psion: note: the latest run in {str(layout.root)!r}, {latest}, stopped {record.status} at "
                      f"step {record.global_step}; this fit starts a new run, {layout.run_id} (continue that one "
                      f"with LIT_PSION_RUN_ID={latest} and no --ckpt_path)", file=sys.stderr)  # fmt: skip


def _refuse_training_on_skip_listed(run: RunContext, strategy: Any) -> None:
    """A resume of a run whose transactional strategy skip-listed batches, under a strategy that does not read the
    list, would train on them: refused before anything is written (the run stays as it was)."""
    if isinstance(strategy, SkipListing) or not (run.layout.skip_list.is_file() or run.layout.skip_list.is_symlink()):
        return
    SkipList.load(run.layout.skip_list)  # (a damaged list is refused: it decides what trains)
    backed, _ = check_skip_list(run.layout)  # as a transactional strategy would leave out: those the receipts back,
    manifest = run.resume_manifest if run.resume_from is not None else None  # but the steps the resume replays
    listed = len([entry for entry in backed if entry not in replayed_entries(run.layout, backed, manifest and
                                                                             manifest.step)])  # fmt: skip
    if listed:
        raise ConfigError(f"run {run.layout.run_id} skip-lists {listed} batch(es) its transactional strategy rolled "
                          f"back ({run.layout.skip_list.name}), which {type(strategy).__name__} would train on; "
                          "resume it with --trainer.strategy transactional (or the transactional strategy its "
                          "config.yaml names)")  # fmt: skip
