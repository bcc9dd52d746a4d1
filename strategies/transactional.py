"""Transactional training: every optimizer step is attempted, validated, then committed or undone.

``TransactionalStrategy`` (one device) and ``TransactionalDDPStrategy`` (DDP) wrap Lightning's
optimizer step (seed 000's rollback trigger, SPEC §3):

1. snapshot the trainable parameters, the optimizer state and any grad-scaler state;
2. run the step, measuring the loss on a rolling buffer of recent batches before (``pre_loss``)
   and after (``post_loss``) it, and the raw gradient norm;
3. roll back, bitwise, when the loss or a gradient is not finite, the gradient norm exceeds
   ``grad_norm_max``, a declared state norm exceeds ``state_norm_max``, or
   ``post_loss > pre_loss * (1 + rollback_tol)``; otherwise commit.

The decision is reduced across ranks, so every rank commits or rolls back together. Each decision
leaves a ``transaction`` receipt. A rolled-back batch is skipped; after ``restore_after``
consecutive rollbacks the last durable checkpoint is restored and the offending batches go on a
skip list (``<run_dir>/skip_list.json``, read again on resume); after ``stop_after`` the run stops
with :class:`TransactionError`.

Losses are measured with each batch's own RNG state (the state its training forward used), so
dropout masks match between ``pre_loss`` and ``post_loss``, and the training RNG stream is left
exactly as an ordinary step leaves it. The schedule follows the global step: a rolled-back step
still consumes its batch and advances the learning-rate schedule.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning_utilities.core.apply_func import apply_to_collection
from typing_extensions import override

from lit_psion.callbacks.checkpoint import resolve_checkpoint
from lit_psion.callbacks.checkpoint_io import ManifestCheckpointIO
from lit_psion.callbacks.evidence import STAGE, batch_digest, receipt_log
from lit_psion.core import atomic_write_json, read_json, sha256_bytes
from lit_psion.core.errors import CheckpointError, ConfigError, TransactionError
from lit_psion.core.receipts import TransactionReceipt

SKIP_LIST_FILE = "skip_list.json"
REASONS = ("nonfinite_loss", "nonfinite_grad", "grad_norm", "state_norm", "nonfinite_post_loss", "regression",
           "skip_listed")  # fmt: skip
"""Rollback reason codes, in the order of their bits in the cross-rank decision."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TransactionPolicy:
    """When a step is rolled back, and what repeated rollbacks lead to.

    Args:
        rollback_tol: Roll back when post_loss > pre_loss * (1 + rollback_tol).
        buffer_len: Batches the losses are measured on: the current one plus up to ``buffer_len - 1``
            recently committed ones.
        grad_norm_max: Roll back when the gradient norm (before clipping) exceeds this (None: no limit).
        state_norm_max: Roll back when the module's ``transaction_state_norm()`` exceeds this.
        restore_after: Consecutive rollbacks after which the last durable checkpoint is restored and
            the offending batches are skip-listed.
        stop_after: Consecutive rollbacks after which the run stops with a TransactionError.
    """

    rollback_tol: float = 0.20
    buffer_len: int = 1
    grad_norm_max: float | None = None
    state_norm_max: float | None = None
    restore_after: int = 3
    stop_after: int = 6

    def __post_init__(self) -> None:
        if not self.rollback_tol >= 0:
            raise ConfigError(f"rollback_tol must be >= 0, got {self.rollback_tol!r}")
        if self.buffer_len < 1:
            raise ConfigError(f"buffer_len must be >= 1 (1: the current batch only), got {self.buffer_len!r}")
        for name in ("grad_norm_max", "state_norm_max"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive or null, got {value!r}")
        if not 1 <= self.restore_after <= self.stop_after:
            raise ConfigError(f"need 1 <= restore_after <= stop_after, got {self.restore_after!r} and "
                              f"{self.stop_after!r}")  # fmt: skip


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [])


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])


def _clone(tree: Any) -> Any:
    return apply_to_collection(tree, torch.Tensor, lambda t: t.detach().clone())


def batch_key(batch: Any) -> str:
    """A stable digest of a batch: its sample ids and cursor when it has them, else its tensors' bytes."""
    if isinstance(batch, dict) and "sample_ids" in batch:
        return batch_digest(batch)
    parts: list[bytes] = []
    apply_to_collection(batch, torch.Tensor, lambda t: parts.append(t.detach().cpu().contiguous().numpy().tobytes()))
    return sha256_bytes(b"".join(parts))


class _Snapshot:
    """Trainable parameters and optimizer state before a step; ``restore`` puts them back bitwise.

    A grad scaler's state is deliberately not restored: its update after an overflow (a lower scale)
    is what lets the next step succeed.
    """

    def __init__(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        self.params = params
        self.values = [p.detach().clone() for p in params]
        self.optimizer, self.optimizer_state = optimizer, _clone(optimizer.state_dict())

    @torch.no_grad()
    def restore(self) -> None:
        for param, value in zip(self.params, self.values, strict=True):
            param.copy_(value)
        self.optimizer.load_state_dict(self.optimizer_state)


class _Transactions:
    """The transaction logic shared by the single-device and DDP strategies (a mixin, first in the MRO)."""

    def _init_transactions(self, policy: TransactionPolicy) -> None:
        self.policy = policy
        self._batch: Any = None
        self._batch_rng: tuple | None = None
        self._buffer: deque[tuple[Any, tuple]] = deque(maxlen=max(0, policy.buffer_len - 1))
        self._skip: dict[str, dict[str, Any]] = {}
        self._pending: list[dict[str, Any]] = []  # the batches of the current run of consecutive rollbacks
        self.commits = 0
        self.rolled_back = 0
        self.rollbacks: dict[str, int] = dict.fromkeys(REASONS, 0)
        """Rolled-back steps by reason (a step can have several)."""
        self.last_decision: str | None = None
        """``commit`` or ``rollback``: what happened to the latest step (read by the Receipts callback)."""
        self.last_record: dict[str, Any] | None = None
        """The latest decision as its receipt states it (step, losses, decision, reasons, action)."""

    # -- Lightning hooks -------------------------------------------------------------------------

    @override
    def setup(self, trainer: L.Trainer) -> None:
        super().setup(trainer)
        path = Path(trainer.default_root_dir) / SKIP_LIST_FILE  # a resumed run skips what the first run listed
        self._skip = {entry["key"]: entry for entry in read_json(path)["batches"]} if path.is_file() else {}

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        self._batch = args[0] if args else kwargs.get("batch")
        self._batch_rng = _rng_state()  # the state this batch's training forward draws its dropout from
        return super().training_step(*args, **kwargs)

    @override
    def optimizer_step(
        self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any], model: Any = None, **kwargs: Any
    ) -> Any:
        module = self.lightning_module
        trainer = module.trainer
        params = [p for p in module.parameters() if p.requires_grad]
        snapshot = _Snapshot(params, optimizer)
        scaler = getattr(self.precision_plugin, "scaler", None)
        buffered = list(self._buffer)
        before = _rng_state()
        pre_old = [self._eval_loss(module, batch, rng) for batch, rng in buffered]
        _set_rng_state(before)  # the training forward draws from where an ordinary step would
        seen: dict[str, Any] = {}

        def watched_closure() -> Any:
            loss = closure()
            seen["loss"] = loss
            grads = [p.grad for p in params if p.grad is not None]
            norms = torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]) if grads else None
            norm = torch.linalg.vector_norm(norms) if norms is not None else torch.zeros(())
            seen["grad_norm"] = norm / scaler.get_scale() if scaler is not None else norm  # mixed precision: unscale
            return loss

        result = super().optimizer_step(optimizer, watched_closure, model, **kwargs)
        after = _rng_state()
        batch, batch_rng = self._batch, self._batch_rng
        current = seen.get("loss")
        current = current.detach().float() if isinstance(current, torch.Tensor) else torch.tensor(float("nan"))
        current = current * trainer.accumulate_grad_batches  # Lightning divides the closure's loss by it
        post_all = [self._eval_loss(module, b, rng) for b, rng in [*buffered, (batch, batch_rng)]]
        _set_rng_state(after)
        pre = torch.stack([*pre_old, current]).mean()
        post = torch.stack(post_all).mean()
        grad_norm = seen.get("grad_norm", torch.zeros(())).float()
        key = batch_key(batch)
        pre, post = self._mean(pre), self._mean(post)  # the regression test uses the means over ranks
        flags = self._flags(module, current, grad_norm, torch.tensor(pre), torch.tensor(post), key)
        decision_bits = self._agree(flags)  # identical on every rank
        reasons = tuple(reason for bit, reason in enumerate(REASONS) if decision_bits >> bit & 1)
        step = trainer.global_step + 1  # this step's number once Lightning counts it
        if reasons:
            snapshot.restore()
            self.last_decision = "rollback"
            self.rolled_back += 1
            for reason in reasons:
                self.rollbacks[reason] += 1
            if scaler is not None and set(reasons) <= {"nonfinite_grad", "nonfinite_loss", "nonfinite_post_loss"}:
                action = "scaler_overflow"  # the grad scaler skipped the step and lowered its scale: not divergence
            else:
                action = self._after_rollback(trainer, optimizer, key, batch, step, reasons)
        else:
            self.last_decision = "commit"
            self.commits += 1
            self._pending.clear()
            self._buffer.append((batch, batch_rng))
            action = None
        self._record(trainer, module, step, key, pre, post, grad_norm, reasons, action)
        if action == "stopped":
            self._stop(reasons)
        return result

    # -- the decision ----------------------------------------------------------------------------

    def _flags(self, module: Any, loss: torch.Tensor, grad_norm: torch.Tensor, pre: torch.Tensor,
               post: torch.Tensor, key: str) -> int:  # fmt: skip
        policy, reasons = self.policy, set()
        if not torch.isfinite(loss):
            reasons.add("nonfinite_loss")
        if not torch.isfinite(grad_norm):
            reasons.add("nonfinite_grad")
        elif policy.grad_norm_max is not None and grad_norm > policy.grad_norm_max:
            reasons.add("grad_norm")
        state_norm = getattr(module, "transaction_state_norm", None)
        if policy.state_norm_max is not None and state_norm is not None:
            with torch.no_grad():
                value = torch.as_tensor(state_norm()).float()
            if not torch.isfinite(value) or value > policy.state_norm_max:
                reasons.add("state_norm")
        if not torch.isfinite(post):
            reasons.add("nonfinite_post_loss")
        elif torch.isfinite(pre) and post > pre * (1 + policy.rollback_tol):
            reasons.add("regression")
        if key in self._skip:
            reasons.add("skip_listed")
        return sum(1 << bit for bit, reason in enumerate(REASONS) if reason in reasons)

    def _agree(self, flags: int) -> int:
        """OR the rollback flags over ranks (one rank's NaN rolls back all)."""
        bits = torch.tensor([flags >> bit & 1 for bit in range(len(REASONS))], dtype=torch.float32,
                            device=self.root_device)  # fmt: skip
        bits = self.reduce_boolean_any(bits)
        return sum(1 << bit for bit in range(len(REASONS)) if bits[bit] > 0)

    def reduce_boolean_any(self, bits: torch.Tensor) -> torch.Tensor:
        return bits

    def _gather(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every rank's entries (one rank here)."""
        return list(entries)

    def _mean(self, value: torch.Tensor) -> float:
        return float(value)

    @torch.no_grad()
    def _eval_loss(self, module: Any, batch: Any, rng: tuple | None) -> torch.Tensor:
        """``module``'s loss on ``batch`` with the RNG state that batch trained with."""
        if rng is not None:
            _set_rng_state(rng)
        measure = getattr(module, "transaction_loss", None)
        with self.precision_plugin.train_step_context():  # the same numerics as the training forward
            if measure is not None:
                return torch.as_tensor(measure(batch)).detach().float()
            module.log = module.log_dict = lambda *args, **kwargs: None  # training_step must not log twice
            try:
                output = module.training_step(batch, 0)
            finally:
                del module.log, module.log_dict
        loss = output["loss"] if isinstance(output, dict) else output
        return loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(float("nan"))

    # -- repeated failure ------------------------------------------------------------------------

    def _after_rollback(self, trainer: L.Trainer, optimizer: torch.optim.Optimizer, key: str, batch: Any,
                        step: int, reasons: tuple[str, ...]) -> str | None:  # fmt: skip
        if "skip_listed" in reasons:
            return "skipped"
        ids = batch["sample_ids"].tolist() if isinstance(batch, dict) and "sample_ids" in batch else None
        self._pending.append({"key": key, "sample_ids": ids, "step": step, "reasons": list(reasons)})
        count = len(self._pending)
        if count >= self.policy.stop_after:
            return "stopped"
        if count % self.policy.restore_after:
            return None
        for entry in self._gather(self._pending):
            self._skip[entry["key"]] = entry
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / SKIP_LIST_FILE
            atomic_write_json(path, {"version": 1, "batches": list(self._skip.values())})
        self.barrier("lit_psion.skip_list")
        return self._restore_checkpoint(trainer, optimizer)

    def _stop(self, reasons: tuple[str, ...]) -> None:
        count, first, last = len(self._pending), self._pending[0]["step"], self._pending[-1]["step"]
        raise TransactionError(
            f"{count} consecutive steps rolled back (steps {first}-{last}, last reasons: {', '.join(reasons)}); "
            "training is diverging: lower the learning rate or check the data, then continue with --ckpt_path last"
        )

    def _restore_checkpoint(self, trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> str:
        try:
            path = resolve_checkpoint(trainer.default_root_dir)
        except CheckpointError:
            return "skip_listed_no_checkpoint"  # nothing durable yet: carry on from the last committed state
        checkpoint = ManifestCheckpointIO().load_checkpoint(path, map_location=self.root_device)
        self.lightning_module.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer_states"][0])
        self._buffer.clear()
        return f"restored:{path.name}"

    # -- evidence --------------------------------------------------------------------------------

    def _record(self, trainer: L.Trainer, module: Any, step: int, key: str, pre: float, post: float,
                grad_norm: torch.Tensor, reasons: tuple[str, ...], action: str | None) -> None:  # fmt: skip
        receipt = TransactionReceipt(
            stage_id=STAGE, step=step, batch_digest=key, pre_loss=_finite_or_none(pre),
            post_loss=_finite_or_none(post), grad_norm=_finite_or_none(float(grad_norm)),
            decision="rollback" if reasons else "commit", reasons=reasons, action=action,
        )  # fmt: skip
        self.last_record = receipt.to_json_dict()
        log = receipt_log(trainer)
        if log is not None and trainer.is_global_zero:
            log.append(receipt)
        if step % trainer.log_every_n_steps:
            return  # the counters are cumulative: log them on the steps that write a log row
        attempts = self.commits + self.rolled_back
        module.log("transactions/commit_rate", self.commits / max(1, attempts), on_step=True, on_epoch=False)
        module.log("transactions/rollbacks", float(self.rolled_back), on_step=True, on_epoch=False)
        for reason, count in self.rollbacks.items():
            if count:
                module.log(f"transactions/rollbacks_{reason}", float(count), on_step=True, on_epoch=False)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class TransactionalStrategy(_Transactions, SingleDeviceStrategy):
    """Transactional steps on one device. Select it with ``trainer.strategy.class_path`` in YAML.

    Args:
        rollback_tol, buffer_len, grad_norm_max, state_norm_max, restore_after, stop_after: the
            :class:`TransactionPolicy`.
        device: ``cpu``, ``cuda:0``, ... (default: the first GPU if there is one, else the CPU).
    """

    def __init__(
        self,
        rollback_tol: float = 0.20,
        buffer_len: int = 1,
        grad_norm_max: float | None = None,
        state_norm_max: float | None = None,
        restore_after: int = 3,
        stop_after: int = 6,
        device: str | None = None,
    ) -> None:
        super().__init__(device=device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
        self._init_transactions(
            TransactionPolicy(
                rollback_tol=rollback_tol,
                buffer_len=buffer_len,
                grad_norm_max=grad_norm_max,
                state_norm_max=state_norm_max,
                restore_after=restore_after,
                stop_after=stop_after,
            )
        )


class TransactionalDDPStrategy(_Transactions, DDPStrategy):
    """Transactional steps under DDP: every rank reaches the same decision (one rank's NaN rolls back all).

    Args:
        rollback_tol, buffer_len, grad_norm_max, state_norm_max, restore_after, stop_after: the
            :class:`TransactionPolicy`. Losses are averaged over ranks before the regression test.
        process_group_backend: ``gloo`` on CPU, ``nccl`` on GPUs (default: Lightning's choice).
    """

    def __init__(
        self,
        rollback_tol: float = 0.20,
        buffer_len: int = 1,
        grad_norm_max: float | None = None,
        state_norm_max: float | None = None,
        restore_after: int = 3,
        stop_after: int = 6,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(process_group_backend=process_group_backend)
        self._init_transactions(
            TransactionPolicy(
                rollback_tol=rollback_tol,
                buffer_len=buffer_len,
                grad_norm_max=grad_norm_max,
                state_norm_max=state_norm_max,
                restore_after=restore_after,
                stop_after=stop_after,
            )
        )

    @override
    def reduce_boolean_any(self, bits: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(bits, op=torch.distributed.ReduceOp.MAX)
        return bits

    @override
    def _gather(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, list(entries))
        return [entry for rank_entries in gathered for entry in rank_entries]

    @override
    def _mean(self, value: torch.Tensor) -> float:
        value = value.detach().clone().to(self.root_device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.SUM)
        return float(value) / self.world_size
