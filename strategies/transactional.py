"""Transactional training: every optimizer step is attempted, validated, then committed or undone.

:class:`Transactional` wraps a Lightning strategy's optimizer step (seed 000's rollback trigger, SPEC §3):

1. snapshot the trainable parameters, the optimizer state and any grad-scaler state;
2. run the step, measuring the loss on a rolling buffer of recent batches before (``pre_loss``)
   and after (``post_loss``) it, and the raw gradient norm;
3. roll back, bitwise, when the loss or a gradient is not finite, the gradient norm exceeds
   ``grad_norm_max``, a declared state norm exceeds ``state_norm_max``, or
   ``post_loss > pre_loss + rollback_tol * |pre_loss|``; otherwise commit.

The decision goes through the strategy's own ``reduce``, so every rank commits or rolls back
together. Each decision leaves a ``transaction`` receipt. A rolled-back batch is skipped; after
``restore_after`` consecutive rollbacks the last durable checkpoint is restored and the offending
batches go on the run's :class:`~lit_psion.core.skip_list.SkipList` (read again on resume);
after ``stop_after`` the run stops with :class:`TransactionError`.

Losses are measured with each batch's own RNG state (the state its training forward used), so
dropout masks match between ``pre_loss`` and ``post_loss``, and the training RNG stream is left
exactly as an ordinary step leaves it. The schedule follows the global step: a rolled-back step
still consumes its batch and advances the learning-rate schedule.

The rolling buffer, the rollback streak and the counters ride in every checkpoint (under
:data:`STATE_KEY`, through the strategy's own ``save_checkpoint``/``load_checkpoint``), so a run
stopped at any step resumes to exactly the decisions and weights of the uninterrupted run.

The mixin composes with any Lightning strategy whose ``reduce``/``broadcast``/``barrier`` reach
every rank; :class:`TransactionalStrategy` and :class:`TransactionalDDPStrategy` are two such
compositions, and a third is as short::

    class TransactionalElasticStrategy(Transactional, ElasticMeshStrategy):
        \"\"\"Transactional steps on an elastic mesh.\"\"\"
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from typing_extensions import override

from lit_psion.checkpoint_io import EXTRA_KEY, load_verified
from lit_psion.core import RunContext, RunLayout, run_context, sha256_bytes
from lit_psion.core.chain import batch_digest
from lit_psion.core.checkpoint import VerifiedCheckpoint
from lit_psion.core.contracts import PURE_TRANSACTION_LOSS, StateNormed, TransactionalModule, lr_flag
from lit_psion.core.errors import CheckpointError, ConfigError, EvidenceError, TransactionError
from lit_psion.core.pointer import read_pointer
from lit_psion.core.policy import TransactionPolicy
from lit_psion.core.receipt_log import emit_receipt
from lit_psion.core.receipted import receipted_checkpoints, restore_target
from lit_psion.core.receipts import TransactionReceipt
from lit_psion.core.skip_list import SkipList, SkippedBatch, check_skip_list, replayed_entries
from lit_psion.core.step_logs import log_step_values
from lit_psion.strategies.snapshot import (
    StepSnapshot,
    WatchedClosure,
    copies,
    is_plain,
    put_back,
    rng_state,
    set_rng_state,
    state_buffers,
)

REASONS = ("nonfinite_loss", "nonfinite_grad", "grad_norm", "state_norm", "nonfinite_post_loss", "regression",
           "skip_listed")  # fmt: skip
"""Rollback reason codes, in the order receipts list them."""
_OVERFLOW = {"nonfinite_grad"}
STATE_KEY = "transactional"
"""Key of the checkpoint dict holding the strategy's state (:meth:`Transactional.transaction_state_dict`)."""
STATE_VERSION = 1


def _declares_pure_loss(module: torch.nn.Module) -> bool:
    """Whether the module's own class (not only a base class) says its transaction_loss is pure: a subclass can
    change the loss, so each class opts in for itself (an instance attribute counts too)."""
    return bool(vars(module).get(PURE_TRANSACTION_LOSS, vars(type(module)).get(PURE_TRANSACTION_LOSS, False)))


def batch_key(batch: Any) -> str:
    """A stable digest of a batch: its global batch's sample ids and cursor when it has them (the same key on
    every rank and at every world size), else its tensors' bytes."""
    if isinstance(batch, dict) and "sample_ids" in batch:
        return batch_digest(batch.get("global_sample_ids", batch["sample_ids"]).tolist(), batch.get("cursor"))
    parts: list[bytes] = []
    apply_to_collection(batch, torch.Tensor, lambda t: parts.append(t.detach().cpu().contiguous().numpy().tobytes()))
    return sha256_bytes(b"".join(parts))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Transactional:
    """Makes a Lightning strategy's optimizer steps transactions. A mixin: put it first in the bases.

    Args:
        policy: When to roll back and what repeated rollbacks lead to (default: :class:`TransactionPolicy`'s).
        kwargs: The strategy's own arguments.
    """

    def __init__(self, policy: TransactionPolicy | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy if policy is not None else TransactionPolicy()
        self.commits = 0
        self.rolled_back = 0
        self.rollbacks: dict[str, int] = dict.fromkeys(REASONS, 0)
        """Rolled-back steps by reason (a step can have several)."""
        self.last_receipt: TransactionReceipt | None = None
        """The latest step's decision as its receipt states it (step, losses, decision, reasons, action)."""
        self.skip_list: SkipList | None = None
        """The run's skip list, loaded from its run directory at setup."""
        self._run: RunContext | None = None
        self._batch: Any = None
        self._batch_rng: tuple | None = None
        self._buffer: deque[tuple[Any, tuple]] = deque(maxlen=self.policy.buffer_len - 1)
        self._measured: tuple[tuple, list[torch.Tensor]] | None = None
        """The weights' version and the buffered batches' losses measured at the end of the last step, reused
        as the next step's pre_loss while the weights are unchanged (a module with a pure transaction_loss)."""
        self._streak: list[SkippedBatch] = []  # the batches of the current run of consecutive rollbacks

    @property
    def last_decision(self) -> str | None:
        """``commit`` or ``rollback``: what happened to the latest step (the Receipts callback reads it)."""
        return self.last_receipt.decision if self.last_receipt is not None else None

    # -- state that rides in the checkpoint ------------------------------------------------------

    def transaction_state_dict(self) -> dict[str, Any]:
        """This rank's state: counters, the current rollback streak and the rolling buffer (on the CPU).

        The buffer holds each recently committed batch with the RNG state it trained with, which is
        what ``pre_loss``/``post_loss`` are measured on; the streak is what ``restore_after`` and
        ``stop_after`` count. Tensors and plain Python data only: it loads with ``weights_only=True``.
        """
        buffer = []
        for batch, (cpu_rng, cuda_rng) in self._buffer:
            if not is_plain(batch):  # it would not load with weights_only=True: measured on fewer batches
                rank_zero_warn(f"a {type(batch).__name__} batch is not tensors and plain data: the transaction "
                               "buffer leaves it out of the checkpoint, so a resume measures on fewer batches")
                continue
            on_cpu = apply_to_collection(batch, torch.Tensor, lambda t: t.detach().to("cpu", copy=True))
            buffer.append({"batch": on_cpu, "cpu_rng": cpu_rng.clone(), "cuda_rng": [t.clone() for t in cuda_rng]})
        return {
            "version": STATE_VERSION, "commits": self.commits, "rolled_back": self.rolled_back,
            "rollbacks": dict(self.rollbacks), "streak": [entry.to_json_dict() for entry in self._streak],
            "buffer": buffer,
        }  # fmt: skip

    def load_transaction_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`transaction_state_dict` returned (batches go to this rank's device)."""
        if state.get("version") != STATE_VERSION:
            raise CheckpointError(f"transactional strategy state version {state.get('version')!r} is not "
                                  f"{STATE_VERSION}; resume with the lit_psion version that wrote it")  # fmt: skip
        self.commits, self.rolled_back = int(state["commits"]), int(state["rolled_back"])
        self.rollbacks = {**dict.fromkeys(REASONS, 0), **{k: int(v) for k, v in state["rollbacks"].items()}}
        self._streak = [SkippedBatch.from_json_dict(entry) for entry in state["streak"]]
        self._buffer.clear()
        self._measured = None
        for entry in state["buffer"]:  # a deque: a shorter buffer_len keeps the newest
            batch = apply_to_collection(entry["batch"], torch.Tensor, lambda t: t.to(self.root_device))
            self._buffer.append((batch, (entry["cpu_rng"], list(entry["cuda_rng"]))))

    # -- Lightning hooks -------------------------------------------------------------------------

    @override
    def setup(self, trainer: L.Trainer) -> None:
        if trainer.training and not (module := trainer.lightning_module).automatic_optimization:  # its own
            # opt.step() is never judged (an evaluation takes no step: nothing to refuse)
            raise ConfigError(f"{type(self).__name__} makes each optimizer step Lightning takes a transaction, but "
                              f"{type(module).__name__} steps its optimizers itself (automatic_optimization is "
                              "False), so no step would be checked or rolled back; train it without the "
                              "transactional strategy, or with automatic optimization")  # fmt: skip
        super().setup(trainer)
        self._run = run_context(trainer)
        self.skip_list = SkipList.load(self._run.layout.skip_list)  # a resumed run skips what the first listed
        unbound = None
        if self.skip_list or self._run.layout.receipts.is_file():  # each listed batch is left out of training from
            # here on: the receipts must back it, and every batch they record listing must be on it
            try:
                backed, pending = check_skip_list(self._run.layout)  # listed past the chain's end: dropped
                manifest = self._run.resume_manifest if self._run.resume_from is not None else None
                if replayed := replayed_entries(self._run.layout, backed, manifest and manifest.step):
                    backed, pending = [entry for entry in backed if entry not in replayed], pending + replayed
                self.skip_list = SkipList(self._run.layout.skip_list, {entry.key: entry for entry in backed})
                if pending and self.is_global_zero:
                    self.skip_list.save()  # those steps train again, and a failing streak lists them again
            except EvidenceError as error:
                unbound = str(error)
        agreed = self.reduce_boolean_decision(unbound is None, all=True) if self.world_size > 1 else unbound is None
        if not agreed:
            raise EvidenceError(unbound or f"another rank refused its {self._run.layout.skip_list.name}")

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Add every rank's :meth:`transaction_state_dict` (in rank order) under :data:`STATE_KEY`, then save."""
        mine = self.transaction_state_dict()
        checkpoint[STATE_KEY] = {"ranks": [self.broadcast(mine, src=rank) for rank in range(self.world_size)]}
        super().save_checkpoint(checkpoint, filepath, storage_options)

    @override
    def load_checkpoint(self, checkpoint_path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Load the checkpoint and this rank's transaction state from it (none in it: start afresh)."""
        checkpoint = super().load_checkpoint(checkpoint_path, *args, **kwargs)
        ranks = checkpoint.get(STATE_KEY, {}).get("ranks", [])
        if len(ranks) == self.world_size:
            self.load_transaction_state_dict(ranks[self.global_rank])
        elif ranks:  # another world size: the batches were other ranks', the counters are shared
            self.load_transaction_state_dict({**ranks[0], "streak": [], "buffer": []})
        source = (checkpoint.get(EXTRA_KEY) or {}).get("run_id")
        if ranks and source != run_context(self.lightning_module.trainer).layout.run_id:
            self._streak = []  # another run's rollbacks: their receipts are in its chain, not this run's, and
            self.commits = self.rolled_back = 0  # so are the decisions its counters count (its metrics' rate)
            self.rollbacks = dict.fromkeys(REASONS, 0)
        return checkpoint

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        self._batch = args[0] if args else kwargs.get("batch")
        self._batch_rng = rng_state()  # the state this batch's training forward draws its dropout from
        return super().training_step(*args, **kwargs)

    @override
    def optimizer_step(
        self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any], model: Any = None, **kwargs: Any
    ) -> Any:
        module = self.lightning_module
        params, buffers = self._step_params(module, optimizer), state_buffers(module)
        snapshot = StepSnapshot(params, optimizer, buffers)
        buffered = list(self._buffer)
        pre = self._remeasured(module, len(buffered))
        if pre is None:
            before = rng_state()
            pre = [self._eval_loss(module, batch, rng) for batch, rng in buffered]
            set_rng_state(before)  # the training forward draws from where an ordinary step would
            put_back(buffers, snapshot.buffer_values)  # measuring is not training: running statistics stay
        watched = WatchedClosure(closure, params, self._scaler)
        scale = self._scaler.get_scale() if self._scaler is not None else None
        result = super().optimizer_step(optimizer, watched, model, **kwargs)
        overflowed = scale is not None and self._scaler.get_scale() < scale  # the scaler skipped it, lowered its scale
        if watched.skipped:  # nothing trained (no loss, no gradients): no transaction to judge, as Lightning's own
            self._measured = None  # step leaves it (not a non-finite loss, which would count towards a stop)
            return result
        after, current = rng_state(), (self._batch, self._batch_rng)  # training_step ran inside the closure
        stepped = copies(buffers)
        post = [self._eval_loss(module, batch, rng) for batch, rng in [*buffered, current]]
        set_rng_state(after)
        put_back(buffers, stepped)
        loss = watched.loss.to(self.root_device) * module.trainer.accumulate_grad_batches  # Lightning divided by it
        means = torch.stack([torch.stack([*pre, loss]).mean(), torch.stack(post).mean()]).to(self.root_device)
        pre_loss, post_loss = self.reduce(means, reduce_op="mean").tolist()  # the means over ranks
        key = batch_key(current[0])
        reasons = self._decide(module, loss, watched.grad_norm, pre_loss, post_loss, key)
        self._measured = None
        if reasons:
            snapshot.restore()
            action = self._after_rollback(optimizer, key, reasons, overflowed)
        else:
            self._streak.clear()
            self._buffer.append(current)
            action = None
            if self._buffer and _declares_pure_loss(module):  # post as measured: the next step's pre
                self._measured = (self._weights_version(module), post[len(post) - len(self._buffer) :])
        self._settle(key, pre_loss, post_loss, float(watched.grad_norm), reasons, action)
        return result

    def _weights_version(self, module: L.LightningModule) -> tuple:
        """Which tensors hold the module's parameters and buffers, and how often each was changed in place."""
        tensors = (*module.parameters(), *module.buffers())
        return tuple((id(t), t.data_ptr(), t.shape, t.dtype, t._version) for t in tensors)

    def _step_params(self, module: L.LightningModule, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        """The parameters a step changes, snapshotted before it and whose gradients' norm it measures."""
        return [p for p in module.parameters() if p.requires_grad]

    # -- the decision ----------------------------------------------------------------------------

    @property
    def _scaler(self) -> Any:
        return self.precision_plugin.scaler if isinstance(self.precision_plugin, MixedPrecision) else None

    def _decide(self, module: L.LightningModule, loss: torch.Tensor, grad_norm: torch.Tensor, pre: float,
                post: float, key: str) -> tuple[str, ...]:  # fmt: skip
        """The reasons to roll back, OR-ed over ranks (one rank's NaN rolls back all); empty: commit."""
        policy, reasons = self.policy, set()
        if not torch.isfinite(loss):
            reasons.add("nonfinite_loss")
        if not torch.isfinite(grad_norm):
            reasons.add("nonfinite_grad")
        elif policy.grad_norm_max is not None and grad_norm > policy.grad_norm_max:
            reasons.add("grad_norm")
        if policy.state_norm_max is not None and isinstance(module, StateNormed):
            with torch.no_grad():
                state_norm = torch.as_tensor(module.transaction_state_norm()).float()
            if not torch.isfinite(state_norm) or state_norm > policy.state_norm_max:
                reasons.add("state_norm")
        if not math.isfinite(post):
            reasons.add("nonfinite_post_loss")
        elif math.isfinite(pre) and post > pre + policy.rollback_tol * abs(pre):  # (a negative loss rises too)
            reasons.add("regression")
        if self.skip_list is not None and key in self.skip_list:
            reasons.add("skip_listed")
        flags = torch.tensor([float(reason in reasons) for reason in REASONS], device=self.root_device)
        agreed = self.reduce(flags, reduce_op="max").tolist()
        return tuple(reason for reason, flag in zip(REASONS, agreed, strict=True) if flag > 0)

    def _remeasured(self, module: L.LightningModule, n_buffered: int) -> list[torch.Tensor] | None:
        """The buffered batches' losses from the end of the last step if no parameter or buffer changed since."""
        if self._measured is None or len(self._measured[1]) != n_buffered:
            return None
        version, losses = self._measured
        return list(losses) if version == self._weights_version(module) else None

    @torch.no_grad()
    def _eval_loss(self, module: L.LightningModule, batch: Any, rng: tuple | None) -> torch.Tensor:
        """``module``'s loss on ``batch`` with the RNG state that batch trained with."""
        if rng is not None:
            set_rng_state(rng)
        with self.precision_plugin.train_step_context():  # the same numerics as the training forward
            if isinstance(module, TransactionalModule):
                return torch.as_tensor(module.transaction_loss(batch)).detach().float()
            module.log = module.log_dict = lambda *args, **kwargs: None  # training_step must not log twice
            try:
                output = module.training_step(batch, 0)
            finally:
                del module.log, module.log_dict
        loss = output["loss"] if isinstance(output, dict) else output
        return loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(float("nan"))

    # -- repeated failure ------------------------------------------------------------------------

    def _after_rollback(self, optimizer: torch.optim.Optimizer, key: str, reasons: tuple[str, ...],
                        overflowed: bool = False) -> str | None:  # fmt: skip
        if overflowed and set(reasons) <= _OVERFLOW:
            # the grad scaler found its scaled gradients non-finite, skipped the step and lowered its scale: not
            # divergence. A non-finite loss, or a step the scaler let through, counts towards a restore and a stop.
            return "scaler_overflow"
        if "skip_listed" in reasons:
            return "skipped"
        batch = self._batch
        ids = tuple(batch["sample_ids"].tolist()) if isinstance(batch, dict) and "sample_ids" in batch else None
        step = self.lightning_module.trainer.global_step + 1  # this step's number once Lightning counts it
        self._streak.append(SkippedBatch(key=key, sample_ids=ids, step=step, reasons=reasons))
        stop = len(self._streak) >= self.policy.stop_after
        if not stop and len(self._streak) % self.policy.restore_after:
            return None
        self._list_streak()  # a stop's streak too: a resume skips those batches rather than stop on them again
        return "stopped" if stop else self._restore_checkpoint(optimizer)

    def _list_streak(self) -> None:
        """Every rank's batches of the failing streak onto the skip list, saved before the decision's receipt."""
        assert self.skip_list is not None, "setup() runs before the first step"
        self.skip_list.add_ranks([self.broadcast(list(self._streak), src=rank) for rank in range(self.world_size)])
        if self.is_global_zero:
            self.skip_list.save()
        self.barrier("lit_psion.skip_list")

    def _restore_checkpoint(self, optimizer: torch.optim.Optimizer) -> str:
        """Load the weights and this optimizer's state from the run's last durable checkpoint."""
        assert self._run is not None, "setup() runs before the first step"
        layout, refused = self._run.layout, None
        receipted = receipted_checkpoints(layout)  # held to the run's checkpoint receipts, as a resume is
        every = next((getattr(c, "every_n_train_steps", None) for c in self.lightning_module.trainer.callbacks
                      if isinstance(getattr(c, "every_n_train_steps", None), int)), None)  # (the run's schedule)
        try:
            verified = restore_target(layout, every, receipted, quiet=not self.is_global_zero)
        except CheckpointError as error:
            verified, refused = None, error
        mine = (verified.path.name, verified.manifest_sha256) if verified is not None else None
        rank_zeros = self.broadcast(mine, src=0)
        if not self.reduce_boolean_decision(mine == rank_zeros, all=True):  # ranks would load different weights
            raise CheckpointError(f"the ranks do not all see the same last durable checkpoint of run "
                                  f"{self._run.layout.run_id} to restore (rank 0: {rank_zeros and rank_zeros[0]}, rank "
                                  f"{self.global_rank}: {mine and mine[0]}); put the runs directory on storage every "
                                  "rank sees alike, then continue with --ckpt_path last")  # fmt: skip
        if refused is not None and receipted.recorded:  # not "none yet": the ones its receipts record are damaged
            raise CheckpointError(f"{len(self._streak)} rollbacks in a row call for the last durable checkpoint, but "
                                  f"none of run {layout.run_id}'s verifies ({refused}); restore its checkpoints from "
                                  "a backup, then continue with --ckpt_path last")  # fmt: skip
        if verified is None:
            return "skip_listed_no_checkpoint"  # nothing durable yet: carry on from the last committed state
        schedule = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        self._restore_weights(verified, optimizer)
        for group, settings in zip(optimizer.param_groups, schedule, strict=True):
            group.update(settings)  # the schedule's learning rate now, not the checkpoint's step's
        self._buffer.clear()
        return f"restored:{verified.path.name}"

    def _restore_weights(self, verified: VerifiedCheckpoint, optimizer: torch.optim.Optimizer) -> None:
        """Load the module's weights and ``optimizer``'s state from a verified checkpoint (one safetensors file)."""
        checkpoint, module = load_verified(verified, map_location=self.root_device), self.lightning_module
        before, now = dict(module.named_parameters()), module.state_dict()
        if any(name in now and now[name].shape != value.shape for name, value in checkpoint["state_dict"].items()):
            module.on_load_checkpoint(checkpoint)  # as a resume does: the checkpoint's structure first (a graph core
        module.load_state_dict(checkpoint["state_dict"])  # that grew since has other shapes, in new Parameters)
        replaced = {id(old): new for name, new in module.named_parameters() if (old := before.get(name)) is not new}
        for group in optimizer.param_groups:  # the optimizer steps the parameters the module now has
            group["params"] = [replaced.get(id(param), param) for param in group["params"]]
        index = module.trainer.optimizers.index(optimizer)
        optimizer.load_state_dict(checkpoint["optimizer_states"][index])

    # -- evidence --------------------------------------------------------------------------------

    def _settle(self, key: str, pre: float, post: float, grad_norm: float, reasons: tuple[str, ...],
                action: str | None) -> None:  # fmt: skip
        """Count, receipt and log the decision; stop the run when the streak is too long."""
        assert self._run is not None, "setup() runs before the first step"
        module = self.lightning_module
        trainer = module.trainer
        step = trainer.global_step + 1
        # A rolled-back step names every rank's batch (the skip list may list them all); the rare step pays for
        # it, with one broadcast per rank.
        keys = tuple(self.broadcast(key, src=rank) for rank in range(self.world_size)) if reasons else None
        self.last_receipt = TransactionReceipt(
            stage_id=self._run.stage, step=step, batch_digest=key,
            pre_loss=_finite_or_none(pre), post_loss=_finite_or_none(post), grad_norm=_finite_or_none(grad_norm),
            decision="rollback" if reasons else "commit", reasons=reasons, action=action, batch_digests=keys,
        )  # fmt: skip
        emit_receipt(trainer, self.last_receipt)
        if reasons:
            self.rolled_back += 1
            for reason in reasons:
                self.rollbacks[reason] += 1
        else:
            self.commits += 1
        if action == "stopped":
            first, last = self._streak[0].step, self._streak[-1].step
            durable = _has_pointer(self._run.layout)
            raise TransactionError(
                f"{len(self._streak)} consecutive steps rolled back (steps {first}-{last}, last reasons: "
                f"{', '.join(reasons)}); training is diverging: check the data or the policy's limits, then "
                + (f"continue with {self._run.layout.resume_flags}, with a lower learning rate if it is the cause "
                   f"(a resume trains with the config's: {lr_flag(module)})" if durable else
                   "start a new run (no checkpoint was written yet), with a lower learning rate if need be")
            )
        if step % trainer.log_every_n_steps == 0 or step == trainer.max_steps:  # cumulative: on the rows, the last too
            self._log_counters(module)

    def _log_counters(self, module: L.LightningModule) -> None:
        counts = {f"transactions/rollbacks_{reason}": float(count) for reason, count in self.rollbacks.items() if count}
        log_step_values(module, **{"transactions/commit_rate": self.commits / (self.commits + self.rolled_back),
                                   "transactions/rollbacks": float(self.rolled_back)}, **counts)  # fmt: skip


class TransactionalStrategy(Transactional, SingleDeviceStrategy):
    """Transactional steps on one device (registry name ``transactional``).

    Args:
        policy: When to roll back and what repeated rollbacks lead to (default: :class:`TransactionPolicy`'s).
        device: ``cpu``, ``cuda:0``, ... (default: the first GPU if there is one, else the CPU).
    """

    def __init__(self, policy: TransactionPolicy | None = None, device: str | None = None) -> None:
        super().__init__(policy, device=device or ("cuda:0" if torch.cuda.is_available() else "cpu"))


class TransactionalDDPStrategy(Transactional, DDPStrategy):
    """Transactional steps under DDP (registry name ``transactional_ddp``): every rank reaches the same decision.

    Losses are averaged over ranks before the regression test, the other rollback reasons are OR-ed
    over ranks (one rank's NaN rolls back all), and the skip list gathers every rank's batches.

    Args:
        policy: When to roll back and what repeated rollbacks lead to (default: :class:`TransactionPolicy`'s).
        kwargs: :class:`~lightning.pytorch.strategies.DDPStrategy`'s arguments (``process_group_backend``, ...).
    """


def _has_pointer(layout: RunLayout) -> bool:
    """Whether the run has a durable checkpoint to continue from."""
    try:
        return read_pointer(layout) is not None
    except CheckpointError:
        return True  # a damaged pointer: a resume falls back to the newest checkpoint that verifies
