"""Checkpoints under ``<run_dir>/checkpoints/`` with a pointer that moves only to durable, verified ones.

Each ``step-NNNNNN/`` directory is written by Lightning through :class:`ManifestCheckpointIO`
(weights as safetensors; optimizer, schedulers, loops, the data cursor and the global RNG state
this callback carries in ``trainer_state.pt``; a digest manifest) and is durable once it exists.
Only then does ``checkpoints/pointer.json`` name it, with its manifest's sha256. Resuming reads the
pointer, never file modification times, verifies every digest, and falls back to the newest
checkpoint that verifies when the pointed-to one does not.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lit_psion.callbacks.evidence import EvidenceCallback, data_manifest_digest, signature_of
from lit_psion.callbacks.strategy_settings import strategy_settings
from lit_psion.checkpoint_io import EXTRA_KEY, ManifestCheckpointIO
from lit_psion.core.checkpoint import MANIFEST_FILE, CheckpointManifest
from lit_psion.core.contracts import HeadWatcher, MembershipAware, RecordWatcher, Resumable, signed_settings
from lit_psion.core.digest import sha256_file
from lit_psion.core.errors import (
    CheckpointError,
    CheckpointWriteError,
    ConfigError,
    DataManifestMismatch,
    LitPsionError,
    OtherModelSettings,
)
from lit_psion.core.files import read_json
from lit_psion.core.layout import RunLayout
from lit_psion.core.manifest import SETTING_FLAGS
from lit_psion.core.pointer import CheckpointPointer, read_pointer, write_pointer
from lit_psion.core.receipt_log import receipt_log
from lit_psion.core.receipts import CheckpointReceipt
from lit_psion.core.run import RunContext


class PointerCheckpoint(EvidenceCallback):
    """Save a checkpoint every ``every_n_train_steps`` and at the end of training.

    Args:
        every_n_train_steps: Steps between checkpoints.
        keep_last_k: How many checkpoints to keep (the pointed-to one and an in-flight one are never deleted; one
            a resume rejected is not counted).
        async_write: Write in a background thread while training goes on. The checkpoint is receipted
            ``async_write_in_flight`` when the write starts and ``durable`` when it lands; only then does
            the pointer move. One write is in flight at a time; the end of training and SIGTERM wait for it.
    """

    def __init__(self, every_n_train_steps: int = 100, keep_last_k: int = 3, async_write: bool = False) -> None:
        if every_n_train_steps < 1:
            raise ConfigError(f"checkpoint.every_n_train_steps must be >= 1, got {every_n_train_steps!r}")
        if keep_last_k < 1:
            raise ConfigError(f"checkpoint.keep_last_k must be >= 1, got {keep_last_k!r}")
        self.every_n_train_steps = every_n_train_steps
        self.keep_last_k = keep_last_k
        self.async_write = async_write
        self._last_saved_step = -1
        self._in_flight: tuple[Path, Future] | None = None
        self._sigterm_in_validation = self._sigterm_mid_window = False
        self._validated_at = -1
        self.writing = False  # while it has Lightning write a checkpoint (RunDirectory refuses any other save then)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        ranks_first = trainer.world_size > 1 and any(getattr(c, "checks_the_ranks_first", False)
                                                     for c in trainer.callbacks)  # fmt: skip
        if stage == "fit" and not ranks_first:  # else once every rank agrees (RunDirectory)
            refuse_unbound(self.run(trainer), trainer, pl_module)
        io = trainer.strategy.checkpoint_io
        if self.async_write and not isinstance(io, ManifestCheckpointIO):
            raise ConfigError(
                f"checkpoint.async_write needs lit_psion's ManifestCheckpointIO, but the strategy uses "
                f"{type(io).__name__}; drop the custom checkpoint plugin or set --checkpoint.async_write false"
            )
        if isinstance(io, ManifestCheckpointIO):
            io.async_write = self.async_write

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._collect(trainer, wait=False)
        connector = trainer._signal_connector  # a SIGTERM inside an accumulation window stops at the window's end:
        if connector.received_sigterm and trainer.fit_loop.epoch_loop._should_accumulate():  # a checkpoint there
            connector.received_sigterm, self._sigterm_mid_window = False, True  # would hold half a step's batches
        elif self._sigterm_mid_window and not trainer.fit_loop.epoch_loop._should_accumulate():
            connector.received_sigterm, self._sigterm_mid_window = True, False
        # The last step is saved here, mid-epoch, rather than in on_train_end: by then Lightning has
        # closed the epoch, and a run resumed with a larger max_steps would skip to the next one.
        # After SIGTERM, Lightning stops right after this hook, so this is the clean place to save.
        step = trainer.global_step
        if step % self.every_n_train_steps == 0 or step == trainer.max_steps or trainer.received_sigterm:
            self.save(trainer)
            if trainer.received_sigterm:
                self._collect(trainer, wait=True)
                if isinstance(trainer.strategy, MembershipAware):  # a mesh's stop is agreed by every rank:
                    trainer.strategy.barrier("lit_psion.mesh_stop")  # none leaves before the checkpoint is durable

    @override
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """A SIGTERM during a fit's validation waits for the validation's end, then stops the fit at the step
        boundary as one during a step does. Lightning would stop mid-validation: the checkpoint of the step, written
        before it, would resume past a validation that left no eval receipt and no metrics."""
        connector = trainer._signal_connector
        if trainer.state.fn == "fit" and not trainer.sanity_checking and connector.received_sigterm:
            connector.received_sigterm, self._sigterm_in_validation = False, True

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)
        self._collect(trainer, wait=True)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.checkpoint_the_pause(trainer)  # (done already if the receipts' own hook asked first)
        # A write already under way may still land; it becomes durable and pointed at only if it does.
        if self._in_flight is not None and not isinstance(exception, CheckpointWriteError):
            with contextlib.suppress(CheckpointWriteError):
                self._collect(trainer, wait=True)

    def checkpoint_the_pause(self, trainer: L.Trainer) -> None:
        """Checkpoint the step a SIGTERM stopped the fit after, when ``on_train_batch_end`` did not: the signal came
        after that hook (during the module's own, or the logging), and Lightning stopped at the step's end all the
        same (never inside an accumulation window: this callback holds a signal there until the window's end).

        Not after the step's validation, nor at the end of an epoch: Lightning's loop state then says the
        validation or the epoch is done, and a resume would count the step's log row twice or leave the epoch
        wrongly; the run pauses at its last checkpoint and a resume replays the steps since, bitwise. Not where
        the step's checkpoint exists (a resume at that step, stopped before it trained).
        One process only: ranks that each saw the signal at another point of the step would not meet in the
        checkpoint's collectives. A write that fails leaves the pause at the last durable checkpoint, said."""
        if trainer.world_size > 1 or trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        step = trainer.global_step
        loop = trainer.fit_loop.epoch_loop
        if step in (self._last_saved_step, self._validated_at) or loop._should_accumulate() \
                or loop._num_ready_batches_reached() or self.run(trainer).layout.checkpoint(step).exists():  # fmt: skip
            with contextlib.suppress(CheckpointWriteError):
                self._collect(trainer, wait=True)  # the step's own write, durable before the pause is receipted
            return
        try:
            self.save(trainer)
            self._collect(trainer, wait=True)
        except LitPsionError as error:  # a write or its receipt failed: the pause goes on being recorded
            print(f"lit_psion: warning: the pause's checkpoint of step {step} was not written ({error}); the run "
                  "pauses at its latest durable checkpoint", file=sys.stderr)  # fmt: skip

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._sigterm_in_validation:
            trainer._signal_connector.received_sigterm, self._sigterm_in_validation = True, False
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._validated_at = trainer.global_step

    def save(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        if step == self._last_saved_step or step == 0:
            return
        self._collect(trainer, wait=True)  # one write in flight at a time
        if (log := receipt_log(trainer)) is not None:
            log.sync()  # the head the manifest records is durable before the checkpoint that names it
        path = self.run(trainer).layout.checkpoint(step)
        self.writing = True
        trainer.save_checkpoint(path, weights_only=False)  # full trainer state, loadable with weights_only=True
        self.writing = False
        self._last_saved_step = step
        io = trainer.strategy.checkpoint_io
        pending = io.take_pending() if isinstance(io, ManifestCheckpointIO) else None
        if pending is None:
            self._commit(trainer, path)
            return
        self._in_flight = (path, pending)
        run = self.run(trainer)
        self._emit_own(trainer, CheckpointReceipt(
            stage_id=run.stage, step=step, checkpoint=run.layout.relative(path), manifest_digest=None,
            object_digest=None, writer=f"rank{trainer.global_rank}", durability="async_write_in_flight",
        ))  # fmt: skip

    def _collect(self, trainer: L.Trainer, wait: bool) -> None:
        """Commit the in-flight write if it has landed (or, with ``wait``, once it lands); re-raise its failure."""
        if self._in_flight is None or not (wait or self._landed(trainer)):
            return
        (path, pending), self._in_flight = self._in_flight, None
        pending.result()  # CheckpointWriteError from the writer thread surfaces here, on the training thread
        self._commit(trainer, path)

    def _landed(self, trainer: L.Trainer) -> bool:
        """Whether the in-flight write is done: on a strategy where every rank writes, done on every rank, agreed
        by all, so a failed write surfaces on every rank at the same step."""
        done = self._in_flight[1].done()
        if trainer.world_size > 1 and getattr(trainer.strategy, "writes_on_every_rank", False):
            flag = torch.tensor([int(done)], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            done = bool(flag.item())
        return done

    def _commit(self, trainer: L.Trainer, path: Path) -> None:
        """Point at the durable checkpoint ``path``, receipt it, and apply retention."""
        if trainer.is_global_zero:
            # The writer just produced these files (and hashed them as it wrote): the manifest's own
            # digest is all the pointer needs; verification is for loading, not for writing.
            run = self.run(trainer)
            manifest_path = path / MANIFEST_FILE
            manifest = CheckpointManifest.from_json_dict(read_json(manifest_path), str(manifest_path))
            pointer = CheckpointPointer(step=manifest.step, checkpoint=path.name,
                                        manifest_sha256=sha256_file(manifest_path))  # fmt: skip
            write_pointer(run.layout, pointer)
            in_flight = self._in_flight[0].name if self._in_flight is not None else None
            run.layout.prune_checkpoints(self.keep_last_k, keep=(path.name, in_flight),
                                         untrusted={rejected.path.name for rejected in run.rejected})  # fmt: skip
            self._emit_own(trainer, CheckpointReceipt(
                stage_id=run.stage, step=manifest.step, checkpoint=run.layout.relative(path),
                manifest_digest=pointer.manifest_sha256, object_digest=manifest.weights_sha256,
                writer=f"rank{trainer.global_rank}", durability="durable",
            ))  # fmt: skip
            if (log := receipt_log(trainer)) is not None:
                log.sync()  # before any record of the head: a recorded head is always in the durable log
            watchers = [callback for callback in trainer.callbacks if isinstance(callback, HeadWatcher)]
            for watcher in sorted(watchers, key=lambda c: isinstance(c, RecordWatcher)):  # run.json, then its mirrors
                watcher.on_checkpoint_receipted(trainer)
        if not self.async_write:  # other ranks wait for the pointer (an async commit happens on rank 0 alone)
            trainer.strategy.barrier("lit_psion.checkpoint")

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Hand the manifest its run-level fields (ManifestCheckpointIO writes them to manifest.json)."""
        layout = self.run(trainer).layout
        pointer = _readable_pointer(layout)
        loader, log, strategy = trainer.train_dataloader, receipt_log(trainer), trainer.strategy
        checkpoint[EXTRA_KEY] = {
            "receipts_head": log.head if log is not None else None,
            "membership": strategy.membership_record() if isinstance(strategy, MembershipAware) else None,
            "run_id": layout.run_id,
            "model_signature": signature_of(pl_module),
            "data_manifest_digest": data_manifest_digest(trainer),
            "cursor": loader.state_dict() if isinstance(loader, Resumable) else None,
            "parent": pointer.checkpoint if pointer is not None else None,
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


def refuse_unbound(run: RunContext, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Refuse, before any weight is restored, a checkpoint made for another model or other data.

    Raises:
        CheckpointError: the checkpoint's model signature is not this model's (exit 4).
        DataManifestMismatch: it was trained on other data (exit 3).
    """
    manifest = run.resume_manifest
    if manifest is None:
        return
    data = data_manifest_digest(trainer)  # first: other data can change the model's shape through its facts
    if None not in (manifest.data_manifest_digest, data) and manifest.data_manifest_digest != data:
        raise DataManifestMismatch(f"checkpoint step {manifest.step} was trained on data manifest "
                                   f"{manifest.data_manifest_digest[:16]}..., but this config's data is {data[:16]}... "
                                   "(files, tokenizer or settings changed); restore the original data and settings "
                                   "or start a new run without --ckpt_path")  # fmt: skip
    signature = signature_of(pl_module)
    if None not in (manifest.model_signature, signature) and manifest.model_signature != signature:
        changed = changed_model_settings(run.resume_from, run.config_yaml, signed_settings(pl_module)) \
            if run.resume_from else ""  # fmt: skip
        if not changed and getattr(pl_module, "base_digest", None) is not None:  # another base, or the same one moved
            another = changed_model_settings(run.resume_from, run.config_yaml, ("base_checkpoint",)) \
                if run.resume_from else ""  # fmt: skip
            changed = another or (" (the same settings: the base they name is another checkpoint now, as when the "
                                  "base run was continued; give --model.init_args.base_checkpoint the base's "
                                  "step-NNNNNN directory this run was trained on)")  # fmt: skip
        raise OtherModelSettings(f"checkpoint step {manifest.step} was written by a model with signature "
                              f"{manifest.model_signature[:16]}..., but this config builds {signature[:16]}... "
                              f"{changed.strip() or '(another architecture or model setting)'}; resume with the run's "
                              "own model settings")  # fmt: skip


def _readable_pointer(layout: RunLayout) -> CheckpointPointer | None:
    """The pointer a new checkpoint names as its parent (none if it is missing or unreadable)."""
    try:
        return read_pointer(layout)
    except CheckpointError:
        return None


SHOWN_SETTINGS = 3  # at most this many differing settings are named in a refusal; the rest are counted


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    return {name: leaf for key, value in node.items() for name, leaf in _leaves(value, f"{prefix}.{key}").items()}


def _model_section(text: str) -> dict[str, Any] | None:
    try:
        config = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None
    model = config.get("model") if isinstance(config, dict) else None
    return _leaves(model, "model") if isinstance(model, dict) else None


def shared_settings(config_yaml: str | None) -> dict[str, Any]:
    """The model settings of ``config_yaml`` every rank of one fit must share (its optimizer and schedule among
    them), as dotted keys: all but the paths, which may differ by node (a base checkpoint is compared by the
    model's signature, which covers its digest)."""
    model = _model_section(config_yaml) if config_yaml is not None else None
    return {key: value for key, value in (model or {}).items() if not _names_a_path(key.rsplit(".", 1)[-1])}


def data_settings(config_yaml: str | None) -> dict[str, Any]:
    """The data settings of ``config_yaml`` every rank of one fit must share, as dotted keys: what decides the global
    batches beyond the data manifest. Not paths (the manifest compares the content), loader workers, nor the
    tokenizer's kind and size or max_bytes (the manifest pins the tokenizer they give and the text it lets in)."""
    try:
        config = yaml.safe_load(config_yaml) if config_yaml is not None else None
    except (yaml.YAMLError, RecursionError, ValueError):
        return {}
    data = config.get("data") if isinstance(config, dict) else None
    leaves = _leaves(data, "data") if isinstance(data, dict) else {}
    local = {"files", "cache_dir", "num_workers", "max_bytes", "tokenizer", "vocab_size"}
    return {key: value for key, value in leaves.items()
            if not _names_a_path(name := key.rsplit(".", 1)[-1]) and name not in local}  # fmt: skip


STEP_MATH = ("max_steps", "max_epochs", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
             "precision", "limit_train_batches", "overfit_batches", "reload_dataloaders_every_n_epochs")
"""The trainer settings of a config that decide a fit's steps, or where its epochs end and so which batches each
draws (as given: :func:`trainer_settings` reads Lightning's)."""
STEP_COUNT = frozenset({"trainer.max_steps", "trainer.max_epochs"})
"""Changed on a resume as a matter of course (to train further)."""


def run_settings(config_yaml: str | None) -> dict[str, Any]:
    """What ``config_yaml`` trains with, as dotted keys: its model and data settings (:func:`shared_settings`,
    :func:`data_settings`) and the trainer's :data:`STEP_MATH` as given."""
    try:
        config = yaml.safe_load(config_yaml) if config_yaml is not None else None
    except (yaml.YAMLError, RecursionError, ValueError):
        return {}
    trainer = config.get("trainer") if isinstance(config, dict) else None
    steps = {f"trainer.{key}": trainer.get(key) for key in STEP_MATH} if isinstance(trainer, dict) else {}
    return {**shared_settings(config_yaml), **data_settings(config_yaml), **steps, **_training_callbacks(trainer),
            **strategy_settings(trainer)}


SHAPES_TRAINING = "shapes_training"
"""A callback class with this attribute true changes the model between steps (growth edits the graph's structure):
its settings decide how a run trains as much as the model's do, so a resume that changes them is warned about and
recorded. lit_psion's ``GrowthPlanner`` sets it; a user's callback (or a subclass) may too."""


def _shapes_training(class_path: str) -> bool:
    """Whether the callback class ``class_path`` names shapes training. Only a module already imported is looked
    in (the fit that lists the class has built it): a path from a recorded config.yaml never imports code."""
    module, _, name = class_path.rpartition(".")
    return bool(getattr(getattr(sys.modules.get(module), name, None), SHAPES_TRAINING, False))


def _training_callbacks(trainer: Any) -> dict[str, Any]:
    """The settings of the training-shaping callbacks a trainer section lists, as ``trainer.callbacks.NAME.key``."""
    listed = trainer.get("callbacks") if isinstance(trainer, dict) else None
    settings: dict[str, Any] = {}
    for entry in listed if isinstance(listed, list) else [listed]:
        class_path = str(entry.get("class_path", "")) if isinstance(entry, dict) else ""
        if _shapes_training(class_path):
            settings.update(_leaves(entry.get("init_args") or {}, f"trainer.callbacks.{class_path.rsplit('.', 1)[-1]}"))
    return settings


def changed_settings(recorded_yaml: str | None, given_yaml: str | None) -> tuple[tuple[str, Any, Any], ...]:
    """``(key, recorded, given)`` for every :func:`run_settings` key the two configs set differently, sorted (none
    when either cannot be read): what a resume of a run changes about it."""
    recorded, given = run_settings(recorded_yaml), run_settings(given_yaml)
    if not recorded or not given:
        return ()
    return tuple((key.replace(".init_args.", "."), _recordable(recorded.get(key)), _recordable(given.get(key)))
                 for key in sorted(recorded.keys() | given.keys()) if recorded.get(key) != given.get(key))  # fmt: skip


def _recordable(value: Any) -> Any:  # as a receipt can record it: an infinity ("no limit") or a NaN as its text
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def changed_on_resume(layout: RunLayout, config_yaml: str) -> tuple[tuple[str, Any, Any], ...]:
    """The settings a resume of the run at ``layout`` with ``config_yaml`` changes from its config.yaml: the run
    goes on with them, and its resumed receipt records each (:attr:`RunContext.changed_settings`)."""
    try:
        recorded = layout.config.read_text(encoding="utf-8") if layout.config.is_file() else None
    except (OSError, UnicodeDecodeError):
        recorded = None
    return changed_settings(recorded, config_yaml)


def resume_warning(run_id: str, changed: tuple[tuple[str, Any, Any], ...],
                   config_yaml: str | None = None) -> str | None:  # fmt: skip
    """The lines naming the changes a resume makes to how its run trains, or None. A longer (or shorter) run is not
    news in itself; it is when the learning-rate schedule of ``config_yaml`` decays over the fit's length. Nor is a data
    setting the manifest pins (a resume is refused unless the manifest is the same: it changed nothing trained on)."""
    lines, pinned = [], {f"data.{name}" for name in SETTING_FLAGS.values()}
    if told := [(key, before, now) for key, before, now in changed if key not in STEP_COUNT | pinned]:
        shown = "; ".join(f"{key}: {before!r} -> {now!r}" for key, before, now in told[:SHOWN_SETTINGS])
        more = f"; {len(told) - SHOWN_SETTINGS} more" if len(told) > SHOWN_SETTINGS else ""
        lines.append(f"lit_psion: warning: run {run_id} continues with settings its config.yaml had otherwise "
                     f"({shown}{more}): from here it is not the run an uninterrupted fit would give, and its resumed "
                     "receipt records the change")  # fmt: skip
    length = [(key, before, now) for key, before, now in changed if key in STEP_COUNT]
    follows = [key for key, value in shared_settings(config_yaml).items() if key.endswith(".decay_steps")
               and value is None]  # fmt: skip
    if length and follows:
        shown = "; ".join(f"{key}: {before!r} -> {now!r}" for key, before, now in length)
        steps = next((before for key, before, _ in length if key == "trainer.max_steps"), None)
        keep = f"--{follows[0]} {steps}" if isinstance(steps, int) and steps > 0 else f"--{follows[0]}"
        lines.append(f"lit_psion: warning: run {run_id} continues with {shown}, and its learning-rate schedule "
                     f"decays over the whole fit ({follows[0]} is null): from the resumed step the lr follows the "
                     f"schedule fitted to the new length, not the one the run had (give {keep} to keep that)")
    return "\n".join(lines) or None


def _signs(key: str, signed: tuple[str, ...] | None) -> bool:
    """Whether the model setting ``key`` (``model.init_args.decoder.n_layer``) can change a signature made of the
    settings ``signed`` (None: any can; the model's class always can)."""
    if signed is None or not key.startswith("model.init_args."):
        return True
    setting = key.removeprefix("model.init_args.")
    return any(setting == name or setting.startswith(f"{name}.") for name in signed)


def _names_a_path(name: str) -> bool:
    return name == "base_checkpoint" or name.endswith(("_path", "_dir", "_file", "_files"))


def trainer_settings(trainer: L.Trainer) -> dict[str, Any]:
    """The trainer settings every rank of one fit must share, as Lightning reads them (``16`` and ``16-mixed``
    alike): they change the step's math or how many steps there are."""
    clip = trainer.gradient_clip_val or None  # 0 and None both mean no clipping
    algorithm = getattr(trainer.gradient_clip_algorithm, "value", trainer.gradient_clip_algorithm)
    unlimited = (None, -1)  # both mean no limit
    return {"trainer.max_steps": None if trainer.max_steps in unlimited else trainer.max_steps,
            "trainer.max_epochs": None if trainer.max_epochs in unlimited else trainer.max_epochs,
            "trainer.accumulate_grad_batches": trainer.accumulate_grad_batches,
            "trainer.gradient_clip_val": float(clip) if clip is not None else None,
            "trainer.gradient_clip_algorithm": str(algorithm) if clip is not None else None,
            "trainer.precision": str(trainer.precision)}  # fmt: skip


def recorded_model_settings(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The model settings in the ``config.yaml`` of the run ``checkpoint_dir`` sits in (None: none readable)."""
    run_config = RunLayout.of(checkpoint_dir.parent.parent).config
    try:
        return _model_section(run_config.read_text(encoding="utf-8")) if run_config.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def changed_model_settings(checkpoint_dir: Path, config_yaml: str | None,
                           signed: tuple[str, ...] | None = None) -> str:  # fmt: skip
    """``" (model.decoder.n_layer: 2 in the run's config.yaml, 3 here)"``, or ``""`` when it cannot tell.

    A manifest records only the model's signature (a digest); the run's config holds the settings it was made
    from, so naming the keys that differ turns "another architecture" into the flag to fix.

    Args:
        checkpoint_dir: A ``<run>/checkpoints/step-NNNNNN`` directory; its run's ``config.yaml`` is read.
        config_yaml: The config given now, as the CLI dumps it.
        signed: The model's settings its signature is made of (``SettingsSigned.signed_settings``, each a key under
            ``model.init_args`` or a section of them); None: every model setting. A setting outside it (a learning
            rate, a dropout) cannot be why the signatures differ, so it is not named.
    """
    recorded = recorded_model_settings(checkpoint_dir)
    given = _model_section(config_yaml) if config_yaml is not None else None
    if recorded is None or given is None:
        return ""
    keys = sorted(key for key in recorded.keys() | given.keys()
                  if recorded.get(key) != given.get(key) and _signs(key, signed))  # fmt: skip
    if not keys:
        return ""
    shown = [f"{key.replace('.init_args.', '.')}: {recorded.get(key)!r} in the run's config.yaml, "
             f"{given.get(key)!r} here" for key in keys[:SHOWN_SETTINGS]]  # fmt: skip
    more = f"; {len(keys) - SHOWN_SETTINGS} more" if len(keys) > SHOWN_SETTINGS else ""
    return f" ({'; '.join(shown)}{more})"
