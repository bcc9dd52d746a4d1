"""Typed, hash-chained receipts (seed 004 "Canonical Train Receipts", SPEC §3).

Every receipt shares one envelope: schema_version, kind, run_id, seq, prev_digest, digest,
created_at, body. ``digest`` is the sha256 of the canonical JSON of everything but ``digest``,
and ``prev_digest`` is the previous receipt's digest, so a log is a chain: editing, deleting,
reordering or truncating lines is detected by :func:`verify_log`.

Bodies are frozen dataclasses registered by kind, one line each; later families (transactions,
membership, adapter windows, promotion) register the same way.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, TextIO, runtime_checkable

from lit_psion.core.digest import sha256_json
from lit_psion.core.files import fsync_path

SCHEMA_VERSION = 1
GENESIS = "0" * 64
"""The ``prev_digest`` of the first receipt in a log."""

RECEIPT_KINDS: dict[str, type[ReceiptBody]] = {}


def register_receipt(cls: type[ReceiptBody]) -> type[ReceiptBody]:
    """Register a receipt body class under its ``kind``; a kind may be registered once."""
    if cls.kind in RECEIPT_KINDS:
        raise ValueError(f"receipt kind {cls.kind!r} is already registered by {RECEIPT_KINDS[cls.kind].__name__}")
    RECEIPT_KINDS[cls.kind] = cls
    return cls


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptBody:
    """Base of every receipt body. Subclasses set ``kind`` and add their fields."""

    kind: ClassVar[str] = ""

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TrainingRunReceipt(ReceiptBody):
    """One run (or run stage) starting, pausing, resuming or ending."""

    kind: ClassVar[str] = "training_run"
    stage_id: str
    event: str
    """``started``, ``resumed``, ``paused``, ``completed`` or ``failed``."""
    status: str
    config_digest: str | None
    data_manifest_digest: str | None
    model_signature: str | None
    checkpoint_lineage: tuple[str, ...] = ()
    outcome: str | None = None


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TransactionReceipt(ReceiptBody):
    """One optimizer step's transaction: committed, or rolled back with reason codes."""

    kind: ClassVar[str] = "transaction"
    stage_id: str
    step: int
    batch_digest: str
    pre_loss: float | None
    post_loss: float | None
    grad_norm: float | None
    decision: str
    """``commit`` or ``rollback``."""
    reasons: tuple[str, ...] = ()
    action: str | None = None
    """After a rollback: ``skipped`` (skip-listed batch), ``restored:step-NNNNNN`` (last durable checkpoint
    restored, offending batches skip-listed), ``skip_listed_no_checkpoint``, ``scaler_overflow`` (mixed
    precision's grad scaler skipped the step; not counted as divergence), ``stopped`` (too many in a row,
    the run ends with a TransactionError); None otherwise."""


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PolicyPromotionReceipt(ReceiptBody):
    """A candidate revision (e.g. a fine-tuned adapter) promoted over, or held behind, the previous one."""

    kind: ClassVar[str] = "policy_promotion"
    stage_id: str
    previous_revision: str
    candidate_revision: str
    split: str
    scores: dict[str, float]
    decision: str
    """``promote`` or ``hold``."""
    reasons: tuple[str, ...] = ()


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AdapterExportReceipt(ReceiptBody):
    """An adapter exported, or merged into its base, with the measured effect of merging."""

    kind: ClassVar[str] = "adapter_export"
    action: str
    """``export`` or ``merge``."""
    adapter_digest: str
    base_checkpoint_digest: str
    output_digest: str
    max_abs_logit_diff: float | None = None
    """Merged against unmerged model on the fixed probe batch (``merge`` only)."""


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TrainerStepReceipt(ReceiptBody):
    """One accepted optimizer step."""

    kind: ClassVar[str] = "trainer_step"
    stage_id: str
    step_in: int
    step_out: int
    batch_digest: str
    """sha256 of the sample ids and cursor the step consumed."""
    cursor: tuple[int, int] | None
    loss: float
    lr: float
    optimizer: str
    checkpoint: str | None = None
    """The checkpoint the step started from, when it is the first step after a resume."""


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointReceipt(ReceiptBody):
    """One checkpoint written or made durable (or skipped as untrustworthy)."""

    kind: ClassVar[str] = "checkpoint"
    stage_id: str
    step: int
    checkpoint: str
    """Run-relative path of the checkpoint."""
    manifest_digest: str | None
    object_digest: str | None
    writer: str
    durability: str
    """``async_write_in_flight``, ``durable`` or ``rejected``."""
    reason: str | None = None


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EvalReceipt(ReceiptBody):
    """One evaluation result."""

    kind: ClassVar[str] = "eval"
    stage_id: str
    step: int
    split: str
    data_manifest_digest: str | None
    policy_revision: str | None
    """The model's identity at evaluation: the step, or a checkpoint digest when one exists."""
    scores: dict[str, float]


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GrowthReceipt(ReceiptBody):
    """One structural change to a graph-core operator, with the evidence it was made on."""

    kind: ClassVar[str] = "growth"
    stage_id: str
    step: int
    action: str
    """``commit`` (Warm -> Hot: a probed region joins the structure) or ``prune`` (Hot -> Cold)."""
    object: str
    """``core:N`` (node N's own state function) or ``edge:S->T`` (the connector from node S to node T)."""
    region: str
    """What changed, e.g. ``T.d0<-S@lag1`` (target node T's dim 0 reading node S one step back)."""
    entries: int
    complexity_before: int
    complexity_after: int
    gamma_after: float
    evidence: dict[str, float]
    """Commit: ``snr``, ``loss_change_mean`` and ``loss_change_std`` (of L_total, negative is better, over
    fresh batches), ``score``. Prune: ``taylor_score`` (0.5 * v * w^2, summed) and ``abs_value_max``."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """The envelope every receipt line carries."""

    schema_version: int
    kind: str
    run_id: str
    seq: int
    prev_digest: str
    created_at: float
    body: dict[str, Any]
    digest: str

    @staticmethod
    def seal(*, kind: str, run_id: str, seq: int, prev_digest: str, body: dict[str, Any]) -> Receipt:
        fields = {"schema_version": SCHEMA_VERSION, "kind": kind, "run_id": run_id, "seq": seq,
                  "prev_digest": prev_digest, "created_at": time.time(), "body": body}  # fmt: skip
        return Receipt(**fields, digest=sha256_json(fields))

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def expected_digest(self) -> str:
        record = self.to_json_dict()
        record.pop("digest")
        return sha256_json(record)


class ReceiptLog:
    """An append-only JSONL file of chained receipts for one run.

    Args:
        path: the ``receipts.jsonl`` file (created on first append).
        run_id: the run every appended receipt belongs to.
    """

    def __init__(self, path: str | Path, run_id: str) -> None:
        self.path, self.run_id = Path(path), run_id
        self.head, self.next_seq = GENESIS, 0
        self._handle: TextIO | None = None
        if self.path.exists():
            result = verify_log(self.path)
            if not result.ok:
                raise ReceiptChainError(f"cannot append to {self.path}: {result.describe()}")
            self.head, self.next_seq = result.head, result.count

    def append(self, body: ReceiptBody) -> Receipt:
        if not isinstance(body, ReceiptBody) or RECEIPT_KINDS.get(body.kind) is not type(body):
            raise TypeError(f"{type(body).__name__} is not a registered receipt body")
        receipt = Receipt.seal(
            kind=body.kind, run_id=self.run_id, seq=self.next_seq, prev_digest=self.head, body=body.to_json_dict()
        )
        if self._handle is None:  # line-buffered: each receipt reaches the file in one write
            self._handle = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._handle.write(json.dumps(receipt.to_json_dict(), sort_keys=True) + "\n")
        self.head, self.next_seq = receipt.digest, self.next_seq + 1
        return receipt

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def sync(self) -> None:
        """Make every appended line durable (called at checkpoints, not every step)."""
        if self._handle is not None:
            self._handle.flush()
        if self.path.exists():
            fsync_path(self.path)


class ReceiptChainError(RuntimeError):
    """A receipt log that does not verify."""


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    count: int
    """Receipts that verified before the first problem (all of them when ``ok``)."""
    head: str
    """Digest of the last receipt that verified."""
    line: int | None = None
    """1-based line number of the first problem."""
    reason: str | None = None
    """``malformed``, ``edited``, ``deleted``, ``reordered``, ``foreign`` or ``truncated``."""
    detail: str = ""

    def describe(self) -> str:
        if self.ok:
            return f"{self.count} receipts verified, head {self.head}"
        where = f"line {self.line}" if self.line is not None else "end of log"
        return f"{where}: {self.reason}: {self.detail}"


def verify_log(path: str | Path, expected_head: str | None = None) -> VerifyResult:
    """Check every line of a receipt log and report the first problem.

    Args:
        path: the ``receipts.jsonl`` file.
        expected_head: the head digest recorded elsewhere (``run.json``); a valid chain that does
            not contain it was truncated.
    """
    head, count, run_id, seen = GENESIS, 0, None, {GENESIS}
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        checked = _check_line(line, count, head, run_id, seen)
        if isinstance(checked, tuple):
            if checked[0] == "deleted" and count in _seqs(lines[number:]):  # the missing one comes later
                checked = ("reordered", f"seq {count} is expected here but comes later in the log")
            return VerifyResult(False, count, head, number, *checked)
        head, count, run_id = checked.digest, count + 1, checked.run_id
        seen.add(head)
    if expected_head is not None and expected_head not in seen:
        detail = f"the recorded head {expected_head} is not in the log ({count} receipts remain)"
        return VerifyResult(False, count, head, None, "truncated", detail)
    return VerifyResult(True, count, head)


def _check_line(line: str, count: int, head: str, run_id: str | None, seen: set[str]) -> Receipt | tuple[str, str]:
    """The receipt on ``line`` if it extends the chain, else (reason, detail)."""
    try:
        receipt = Receipt(**json.loads(line))
    except (ValueError, TypeError) as error:
        return "malformed", f"not a receipt envelope ({error})"
    if receipt.expected_digest() != receipt.digest:
        return "edited", f"content does not match its digest {receipt.digest}"
    if run_id is not None and receipt.run_id != run_id:
        return "foreign", f"run_id {receipt.run_id!r} in a log of run {run_id!r}"
    if receipt.seq > count:
        return "deleted", f"seq {receipt.seq} follows seq {count - 1}: {receipt.seq - count} receipt(s) missing"
    if receipt.seq < count or receipt.prev_digest != head:
        why = "was seen earlier" if receipt.prev_digest in seen else "does not chain to the line before"
        return "reordered", f"seq {receipt.seq} at position {count}; its prev_digest {why}"
    return receipt


def _seqs(lines: list[str]) -> set[int]:
    seqs = set()
    for line in lines:
        try:
            seqs.add(json.loads(line)["seq"])
        except (ValueError, TypeError, KeyError):
            continue
    return seqs


@runtime_checkable
class ReceiptChainHolder(Protocol):
    """What owns a fit's receipt chain among the trainer's callbacks (``lit_psion.callbacks.Receipts``)."""

    chain: ReceiptLog | None


def receipt_log(trainer: Any) -> ReceiptLog | None:
    """The fit's receipt log, if a callback is collecting one (on rank 0 only; None elsewhere or when off)."""
    for callback in trainer.callbacks:
        if isinstance(callback, ReceiptChainHolder) and isinstance(callback.chain, ReceiptLog):
            return callback.chain
    return None


def emit_receipt(trainer: Any, body: ReceiptBody) -> None:
    """Append ``body`` to the fit's receipt chain on rank 0 (a no-op when receipts are off)."""
    log = receipt_log(trainer)
    if log is not None and trainer.is_global_zero:
        log.append(body)


def batch_digest(sample_ids: Sequence[int], cursor: Sequence[int] | None) -> str:
    """sha256 of the sample ids a batch holds and the cursor it consumed (the data a step saw)."""
    return sha256_json({"sample_ids": list(sample_ids), "cursor": list(cursor or ())})
