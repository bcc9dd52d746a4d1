"""Evidence capture: callbacks that append typed receipts to the run's hash chain.

``Receipts`` owns the run's ``receipts.jsonl``; any :class:`EvidenceCallback` (lit_psion's own
checkpoint callback, or a user's, added by ``class_path``) appends through it with :meth:`emit`.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lit_psion.core import RunContext, RunRecord, run_context, sha256_bytes
from lit_psion.core.audit import check_chain, receipted_checkpoints
from lit_psion.core.chain import ReceiptWriteError, batch_digest
from lit_psion.core.contracts import MembershipAware, PauseCheckpointer, ReplayData, SignedModel, lr_flag
from lit_psion.core.errors import ConfigError, EvidenceError, TrainingDiverged, failure_class
from lit_psion.core.receipt_log import ReceiptLog, emit_receipt, receipt_log
from lit_psion.core.receipts import (
    RECEIPT_KINDS,
    ChainSealReceipt,
    CheckpointReceipt,
    EvalReceipt,
    ReceiptBody,
    TrainerStepReceipt,
    TrainingRunReceipt,
)
from lit_psion.core.step_logs import replace_kept


def _own_kinds() -> set[str]:
    """The receipt kinds lit_psion registers: what lit_psion did, written only by it."""
    return {kind for kind, cls in RECEIPT_KINDS.items() if cls.__module__.startswith("lit_psion.")}


class EvidenceCallback(Callback):
    """Base class for callbacks that leave receipts. Subclass it and call :meth:`emit`."""

    def emit(self, trainer: L.Trainer, body: ReceiptBody) -> None:
        """Append ``body`` to the run's receipt chain (on rank 0; a no-op when receipts are off).

        Raises:
            ConfigError: ``body`` is not an instance of a registered receipt body class.
            EvidenceError: ``body`` is of one of lit_psion's own kinds (or a subclass of one): a checkpoint, step or
                run receipt says what lit_psion did, so a callback cannot write one.
        """
        name, fix = type(self).__qualname__, "emit an instance of a ReceiptBody dataclass decorated with " \
            "@register_receipt (docs/receipts.md)"  # fmt: skip
        if not isinstance(body, ReceiptBody):
            raise ConfigError(f"{name} emitted a {type(body).__qualname__}, not a receipt body; {fix}")
        if body.kind in _own_kinds():
            raise EvidenceError(f"{type(self).__qualname__} emitted a {body.kind!r} receipt, one of lit_psion's own "
                                "kinds (they record what lit_psion did); register a kind of your own with "
                                "@register_receipt (docs/receipts.md)")  # fmt: skip
        if (holder := RECEIPT_KINDS.get(body.kind)) is not type(body):
            whose = "is not registered" if holder is None else (
                f"is registered to another class, {holder.__module__}.{holder.__qualname__} (was the class defined "
                "again after it registered?)")  # fmt: skip
            raise ConfigError(f"{name} emitted a {type(body).__qualname__} whose kind {body.kind!r} {whose}; {fix}")
        if receipt_log(trainer) is None and not vars(self).get("_said_unwritten") and trainer.is_global_zero and any(
                hasattr(callback, "chain") for callback in trainer.callbacks):  # fmt: skip  (receipts on, no chain)
            self.__dict__["_said_unwritten"] = True
            when = ("before the run's chain opened (it opens in setup: emit from on_fit_start on)"
                    if trainer.state.fn == TrainerFn.FITTING else f"in {trainer.state.fn.value}, which keeps none")
            print(f"lit_psion: warning: {name} emitted a {body.kind!r} receipt {when}; it was not written",
                  file=sys.stderr)  # fmt: skip
        emit_receipt(trainer, body)

    def _emit_own(self, trainer: L.Trainer, body: ReceiptBody) -> None:
        """lit_psion's own callbacks' way to append lit_psion's kinds (which :meth:`emit` refuses)."""
        emit_receipt(trainer, body)

    @staticmethod
    def run(trainer: L.Trainer) -> RunContext:
        """The fit's run: its layout (where files go) and its stage (what receipts say it is)."""
        return run_context(trainer)


def data_manifest_digest(trainer: L.Trainer) -> str | None:
    """The digest of the fit's data manifest, if its DataModule pins one."""
    data = trainer.datamodule
    manifest = data.manifest if isinstance(data, ReplayData) else None
    return manifest.digest if manifest is not None else None


def signature_of(module: L.LightningModule) -> str | None:
    return module.model_signature if isinstance(module, SignedModel) else None


class Receipts(EvidenceCallback):
    """Write ``receipts.jsonl``: run, step, and evaluation receipts in one hash chain.

    Args:
        every_n_steps: Emit a step receipt every n optimizer steps (1: every step).
        flush_every_n_steps: Write step receipts in batches of this many (1: each as its step ends). Each is sealed
            with the time its step ended, and every held one is written before any other receipt, any checkpoint,
            and the end of the fit, so the log reads as if each had been written at once; a kill loses at most the
            held ones, steps after the last checkpoint that a resume trains again.
        flush_every_seconds: Write held step receipts once the oldest has waited this long, however few (asked at
            every step's start; ``.inf``: only ``flush_every_n_steps`` bounds them). Held ones are also written
            before a validation. On a mesh (an elastic strategy) each is written as its step ends.
    """

    def __init__(self, every_n_steps: int = 1, flush_every_n_steps: int = 16, flush_every_seconds: float = 1.0) -> None:
        for name, value in (("every_n_steps", every_n_steps), ("flush_every_n_steps", flush_every_n_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"receipts.{name} must be an integer >= 1, got {value!r}")
        seconds = flush_every_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or math.isnan(seconds) or seconds < 0:
            raise ConfigError(f"receipts.flush_every_seconds must be a number >= 0 (.inf: no time bound), got "
                              f"{seconds!r}")
        self.every_n_steps, self.flush_every_n_steps = every_n_steps, flush_every_n_steps
        self.flush_every_seconds = float(flush_every_seconds)
        self.chain: ReceiptLog | None = None
        self._sample_ids: list[int] | None = None
        self._cursor: tuple[int, int] | None = None
        self._resumed_from: str | None = None
        self._started = False
        self._unreceipted_resume = False
        self._sealed = False
        self._micro_losses, self._micro_batches = 0.0, 0  # the step's earlier micro-batches' (divided) losses

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._sealed = False
        self._micro_losses, self._micro_batches = 0.0, 0  # (a fit stopped mid-step leaves none to the next)
        if stage == "fit" and trainer.is_global_zero:
            run = self.run(trainer)
            layout = run.layout
            verified = None
            if run.resumed and layout.is_run() and layout.receipts.is_file():  # every recorded head, or no resume
                known = {run.resume_from.name: run.resume_manifest.receipts_head} if run.resume_manifest else {}
                verified = check_chain(layout, RunRecord.load(layout), before_torn_tail=True, known_heads=known)
            self._unreceipted_resume = self._resumed_without_its_receipt(run)  # read before this fit appends
            # A mesh writes each as its step ends: a rank 0 lost with its peers runs no clean-up, and a membership
            # receipt counts the steps receipted past the checkpoint it resumes from (steps_replayed).
            held = 1 if isinstance(trainer.strategy, MembershipAware) else self.flush_every_n_steps
            self.chain = ReceiptLog(layout.receipts, run_id=layout.run_id, repair_after=run.resume_receipts_head,
                                    verified=verified, flush_every_n_steps=held,
                                    flush_every_seconds=self.flush_every_seconds)  # fmt: skip

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resumed_from, self._started = trainer.ckpt_path, True
        event = "resumed" if trainer.ckpt_path else "started"
        self._emit_own(trainer, self._run_receipt(trainer, pl_module, event, "active"))
        run = self.run(trainer)
        self._receipt_a_resumed_checkpoint(trainer, run)
        for rejected in run.rejected:
            self._emit_own(trainer, CheckpointReceipt(
                stage_id=run.stage, step=rejected.step, checkpoint=run.layout.relative(rejected.path),
                manifest_digest=None, object_digest=None, writer="resolver", durability="rejected",
                reason=rejected.reason,
            ))  # fmt: skip

    @staticmethod
    def _resumed_without_its_receipt(run: RunContext) -> bool:
        manifest = run.resume_manifest
        if run.resume_from is None or manifest is None or manifest.run_id != run.layout.run_id:
            return False
        return manifest.step not in receipted_checkpoints(run.layout).recorded

    def _receipt_a_resumed_checkpoint(self, trainer: L.Trainer, run: RunContext) -> None:
        """A checkpoint of this run resumed without its durable receipt (the run was killed between the two)
        gets it now, so every checkpoint a sealed chain covers is receipted."""
        manifest = run.resume_manifest
        if not self._unreceipted_resume or manifest is None:
            return
        self._emit_own(trainer, CheckpointReceipt(
            stage_id=run.stage, step=manifest.step, checkpoint=run.layout.relative(run.resume_from),
            manifest_digest=run.resume_manifest_sha256, object_digest=manifest.weights_sha256, writer="resolver",
            durability="durable", reason="receipted on resume: the run stopped after it became durable, before its "
            "receipt",
        ))  # fmt: skip

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        has_ids = isinstance(batch, dict) and "sample_ids" in batch
        self._cursor = tuple(batch["cursor"]) if has_ids and batch.get("cursor") else None
        ids = batch.get("global_sample_ids", batch.get("sample_ids")) if has_ids else None
        self._sample_ids = ids.tolist() if has_ids else None  # the whole global batch (digested when written)
        if self.chain is not None:
            self.chain.flush_if_due()

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.chain is not None:  # a validation can take minutes: the steps before it are not held through it
            self.chain.flush()

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        step = trainer.global_step
        accumulating = trainer.fit_loop.epoch_loop._should_accumulate()  # a micro-batch before its step's last
        if outputs is None or (isinstance(outputs, dict) and "loss" not in outputs):  # a batch training_step skipped
            if not accumulating:
                self._micro_losses, self._micro_batches = 0.0, 0  # (its step is done: none of it is the next one's)
            return
        transactional = hasattr(trainer.strategy, "last_decision")  # RollbackAware (no Protocol check: every step)
        given = outputs["loss"] if isinstance(outputs, dict) else outputs
        if accumulating:  # no step yet: each loss is divided by accumulate_grad_batches
            self._micro_losses += _as_float(given)
            self._micro_batches += 1
            if not transactional:  # (a transaction judges the whole step, at its end)
                _global_loss(trainer, step + 1, self._micro_losses)
            return
        micro, count = self._micro_losses, self._micro_batches + 1
        self._micro_losses, self._micro_batches = 0.0, 0
        if transactional and trainer.strategy.last_decision == "rollback":
            return  # the strategy undid this step; its transaction receipt says why
        # The step's loss over its whole batch: its micro-batches' mean (an epoch's last step may have fewer of them
        # than accumulate_grad_batches, each still divided by it)
        accumulated = trainer.accumulate_grad_batches
        whole = (_as_float(given) + micro) * accumulated / count if accumulated > 1 else given
        loss = _global_loss(trainer, step, whole)
        if trainer.world_size > 1 or trainer.accumulate_grad_batches > 1:  # (callbacks end a step before the model,
            # which writes the row): the step's loss over its whole global batch, for its last micro-batch's own
            replace_kept(pl_module, "train/loss", torch.tensor(loss, dtype=torch.float64))
        if step % self.every_n_steps:
            return
        if self.chain is None or not trainer.is_global_zero:
            return
        optimizer = trainer.optimizers[0]
        run = self.run(trainer)
        checkpoint, self._resumed_from = self._resumed_from and run.layout.relative(self._resumed_from), None
        ids, cursor, stage = self._sample_ids, self._cursor, run.stage
        lr, name = float(optimizer.param_groups[0]["lr"]), type(optimizer).__name__
        if not math.isfinite(lr):  # (its receipt could not record it: refused now, not when the receipts are written)
            flag = lr_flag(trainer.lightning_module)
            raise TrainingDiverged(f"the learning rate at step {step} is {lr}: the schedule or the optimizer's "
                                   f"settings gave a non-finite value; check them ({flag})")
        self.chain.defer(lambda: TrainerStepReceipt(  # built when written: off the step's path, like the digest
            stage_id=stage, step_in=step - 1, step_out=step,
            batch_digest="" if ids is None else batch_digest(ids, cursor), cursor=cursor, loss=loss,
            lr=lr, optimizer=name, checkpoint=checkpoint,
        ))  # fmt: skip

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        _refuse_a_score_logged_twice(trainer)
        scores = {k: float(v) for k, v in _this_validations(trainer).items() if k.startswith("val/") and _finite(v)}
        self._emit_own(trainer, EvalReceipt(
            stage_id=self.run(trainer).stage, step=trainer.global_step, split="val",
            data_manifest_digest=data_manifest_digest(trainer),
            policy_revision=f"step-{trainer.global_step}", scores=scores,
        ))  # fmt: skip

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._started and trainer.ckpt_path is not None:  # a resume at max_steps: Lightning skipped training
            self.on_train_start(trainer, pl_module)  # (the run's unfinished end: the CLI allows only that)
        event = "paused" if trainer.interrupted else "completed"
        for logger in trainer.loggers if event == "completed" and trainer.is_global_zero else ():  # every row written
            logger.save()  # before the run's end is receipted and sealed (Lightning's last save comes at teardown)
        self._emit_own(trainer, self._run_receipt(trainer, pl_module, event, event))
        if event == "completed" and self.chain is not None:
            self._emit_own(trainer, ChainSealReceipt(stage_id=self.run(trainer).stage, step=trainer.global_step,
                                                receipts=self.chain.next_seq))  # fmt: skip
            self._sealed = True  # nothing follows a seal but a resume's receipts
        if self.chain is not None:
            self.chain.sync()

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.chain is not None:
            self.chain.close()

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not self._started or self._sealed or isinstance(exception, ReceiptWriteError):
            return  # refused before training began, raised after the seal, or the log cannot take a receipt
        if self.chain is not None:  # the held steps first, whatever fails below (Lightning runs no teardown now)
            with contextlib.suppress(ReceiptWriteError):
                self.chain.flush()
        event = "paused" if isinstance(exception, KeyboardInterrupt | SIGTERMException) else "failed"
        if isinstance(exception, SIGTERMException):  # the paused step's checkpoint first, so this receipt follows it
            for callback in trainer.callbacks:
                if isinstance(callback, PauseCheckpointer):
                    callback.checkpoint_the_pause(trainer)
        strategy = trainer.strategy
        mesh = strategy.stop_reason() if isinstance(strategy, MembershipAware) else None
        outcome = (mesh or type(exception).__name__) if event == "paused" else failure_class(exception)
        self._emit_own(trainer, self._run_receipt(trainer, pl_module, event, event, outcome))
        if self.chain is not None:
            self.chain.sync()

    def _run_receipt(
        self, trainer: L.Trainer, pl_module: L.LightningModule, event: str, status: str, outcome: str | None = None
    ) -> TrainingRunReceipt:
        run = self.run(trainer)
        config = run.layout.config
        if run.config_yaml is not None:  # the config this attempt trains with (config.yaml is written as it starts)
            config_digest = sha256_bytes(run.config_yaml.encode())
        else:
            config_digest = sha256_bytes(config.read_bytes()) if config.exists() else None
        return TrainingRunReceipt(
            stage_id=run.stage, event=event, status=status,
            config_digest=config_digest,
            data_manifest_digest=data_manifest_digest(trainer),
            model_signature=signature_of(pl_module),
            checkpoint_lineage=run.lineage or _path_lineage(run, trainer.ckpt_path),
            outcome=outcome,
            changed_settings=run.changed_settings if event == "resumed" else (),
        )  # fmt: skip


def _path_lineage(run: RunContext, ckpt_path: str | None) -> tuple[str, ...]:
    """The lineage of a Python-API fit given ``ckpt_path`` directly (the CLI records a verified one)."""
    return (run.layout.relative(ckpt_path),) if ckpt_path else ()


def _as_float(loss: Any) -> float:
    """A step's loss as one number (the mean of a tensor that holds several)."""
    if isinstance(loss, torch.Tensor):
        return float(loss.detach().float().mean() if loss.numel() != 1 else loss.detach())
    return float(loss)


def _global_loss(trainer: L.Trainer, step: int, loss: Any) -> float:
    """The step's loss over the whole global batch: the mean of the ranks' losses (each over its equal slice).

    What a step receipt records, like its batch digest, so a run's receipts read the same at every world size
    (a run resumed at another world size continues the same curve). One collective per step, which also
    stops every rank when any rank's loss is not finite (a step no transactional strategy rolled back): its
    receipt could not record the loss, and every later step would train on non-finite weights.
    """
    local = _as_float(loss)  # the step's one host sync
    if trainer.world_size == 1:
        mean = local
    else:
        strategy = trainer.strategy
        total = strategy.reduce(torch.tensor(local, dtype=torch.float64, device=strategy.root_device), reduce_op="sum")
        mean = float(total) / trainer.world_size
    if not math.isfinite(mean):
        value = local if not math.isfinite(local) else "non-finite on a peer"
        raise TrainingDiverged(
            f"the training loss at step {step} is {value}: training diverged; lower the learning rate "
            f"({lr_flag(trainer.lightning_module)}), or use --trainer.strategy transactional, which rolls such "
            "steps back"
        )
    return mean


def _refuse_a_score_logged_twice(trainer: L.Trainer) -> None:
    """A validation score's name logged in two hooks (the model's ``validation_step`` and a callback's
    ``on_validation_epoch_end``, say): Lightning keeps the last value, which the eval receipt would then record as
    the model's score. Lightning's own refusal covers a name logged twice in one hook only."""
    hooks: dict[str, set[str]] = {}
    for result in (getattr(trainer, "_results", None) or {}).values():
        meta = getattr(result, "meta", None)
        if meta is not None and isinstance(meta.name, str) and meta.name.startswith("val/"):
            hooks.setdefault(meta.name, set()).add(meta.fx)
    for name, where in sorted(hooks.items()):
        if len(where) > 1:
            raise ConfigError(f"self.log({name!r}, ...) in {' and in '.join(sorted(where))}: one validation score "
                              "logged twice, so the eval receipt could not tell which value is the model's; log "
                              f"yours under another name (for example 'user/{name.removeprefix('val/')}')")


def _this_validations(trainer: L.Trainer) -> dict[str, Any]:
    """The metrics this validation logged. ``trainer.callback_metrics`` keeps every earlier validation's too
    (Lightning never clears it during a fit): a score logged every k validations was recorded, stale, in each eval
    receipt between, as the model's score at a step no validation measured. The loop's results hold this one's until
    after the hook."""
    if getattr(trainer, "_results", None) is None:
        return trainer.callback_metrics
    return trainer._logger_connector.metrics["callback"]


def _finite(value: Any) -> bool:
    return bool(torch.isfinite(torch.as_tensor(value)).all())
