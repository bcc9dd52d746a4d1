"""The append-only receipt log of one run, and how callbacks reach the fit's (SPEC §3).

:class:`ReceiptLog` seals each receipt onto the chain's head (:mod:`lit_psion.core.chain`, which also verifies a
log) and appends it, or a batch of held step receipts, in one write, so a kill leaves at most one torn final line,
which a resume can cut.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from lit_psion.core.chain import (
    Receipt,
    ReceiptChainError,
    ReceiptWriteError,
    VerifyResult,
    genesis,
    torn_bytes,
    verify_log,
)
from lit_psion.core.digest import canonical_json, sha256_bytes
from lit_psion.core.errors import EvidenceError
from lit_psion.core.files import fsync_path, unshare
from lit_psion.core.receipts import RECEIPT_KINDS, ChainRepairReceipt, ReceiptBody, read_back_problem


class ReceiptLog:
    """An append-only JSONL file of chained receipts for one run.

    Args:
        path: the ``receipts.jsonl`` file (created on first append).
        run_id: the run every appended receipt belongs to.
        repair_after: the head recorded by the run's durable checkpoint being resumed. A torn final
            line (unterminated and unreadable: a kill or a full disk during an append) that comes
            after this head is cut off and a ``chain_repair`` receipt says so; anything else that
            does not verify is refused.
        flush_every_n_steps: routine receipts given to :meth:`defer` (a fit's step receipts) are held and written
            together once this many wait; 1 writes each at once.
        flush_every_seconds: held ones are also written once the oldest has waited this long (checked by
            :meth:`defer` and :meth:`flush_if_due`).

    A held receipt is sealed and written before any other receipt, any read of :attr:`head` or :attr:`next_seq`,
    any :meth:`sync` and :meth:`close`, with the time it was given: the log reads exactly as if each had been
    written when it was given. A kill loses only the held ones (steps after the last checkpoint, which a resume
    trains again).

    Raises:
        ReceiptChainError: the existing log does not verify (exit 5).
    """

    def __init__(
        self,
        path: str | Path,
        run_id: str,
        repair_after: str | None = None,
        verified: VerifyResult | None = None,
        flush_every_n_steps: int = 1,
        flush_every_seconds: float = 1.0,
    ) -> None:
        self.path, self.run_id = Path(path), run_id
        self._head, self._next_seq = genesis(run_id), 0
        self.flush_every_n_steps, self.flush_every_seconds = flush_every_n_steps, flush_every_seconds
        self._deferred: list[tuple[float, Callable[[], ReceiptBody]]] = []
        self._handle: BinaryIO | None = None
        self._broken: str | None = None
        self._torn, self._anchor, self._lost_newline = b"", None, False
        self._awaiting_resume, self._sealed_here = False, False
        self._until_resume: list[ReceiptBody] = []
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        torn = torn_bytes(data)
        # ``verified``: the caller already checked this log up to any torn tail (a resume checks its anchors)
        result = verified or verify_log(self.path, run_id=run_id, upto=len(data) - len(torn) if torn else None)
        if not result.ok:
            raise ReceiptChainError(f"cannot append to {self.path}: {result.describe()}")
        self._head, self._next_seq = result.head, result.count
        self._awaiting_resume = result.sealed or bool(torn)  # only a resume's receipts may come next
        if torn and (repair_after is None or repair_after not in result.digests):
            raise ReceiptChainError(
                f"cannot append to {self.path}: its last line is torn ({len(torn)} bytes, unterminated) and the kept "
                "chain does not reach the resumed checkpoint's recorded head, so the cut cannot be proven safe; "
                "restore the log from a backup or start a new run"
            )
        # Mended at the first append, not here: a fit refused after opening the log (another model, other
        # data) leaves the file exactly as it found it.
        self._torn = torn
        self._anchor = repair_after
        self._lost_newline = not torn and bool(data) and not data.endswith(b"\n")

    @property
    def head(self) -> str:
        """The digest of the last receipt (held ones written first)."""
        self.flush()
        return self._head

    @property
    def next_seq(self) -> int:
        """The seq the next receipt takes (held ones written first)."""
        self.flush()
        return self._next_seq

    def defer(self, make: Callable[[], ReceiptBody]) -> None:
        """Hold the receipt ``make`` builds, stamped now, to be written with the next ones (see the class)."""
        self._deferred.append((time.time(), make))
        if len(self._deferred) >= self.flush_every_n_steps:
            self.flush()
        else:
            self.flush_if_due()

    def flush_if_due(self) -> None:
        """Write the held receipts if the oldest has waited ``flush_every_seconds`` (a fit asks at every step)."""
        if self._deferred and time.time() - self._deferred[0][0] >= self.flush_every_seconds:
            self.flush()

    def flush(self) -> None:
        """Seal and write every held receipt, in the order given, in one write. One that cannot be built or sealed
        leaves them all held (and raises); a write the disk refused loses them with the log (it takes no more)."""
        if not self._deferred:
            return
        held, self._deferred = self._deferred, []  # (a torn tail's repair, inside the write, appends: not these)
        try:
            self._write_all([(make(), at) for at, make in held])
        except BaseException:
            if self._broken is None:
                self._deferred = held + self._deferred
            raise

    def _mend(self) -> None:
        """Before the first append: restore a lost final newline, or cut a provably torn tail and receipt it."""
        if self._lost_newline:
            self._lost_newline = False
            with open(self.path, "ab") as handle:  # a whole receipt that lost only its newline
                handle.write(b"\n")
        if self._torn:
            torn, self._torn = self._torn, b""
            self._repair(torn, self._anchor)

    def _repair(self, torn: bytes, anchor: str) -> None:
        with open(self.path, "r+b") as handle:
            handle.truncate(self.path.stat().st_size - len(torn))
            handle.flush()
            os.fsync(handle.fileno())
        self.append(ChainRepairReceipt(dropped_bytes=len(torn), dropped_sha256=sha256_bytes(torn), anchor=anchor))
        self.sync()

    def append(self, body: ReceiptBody) -> Receipt | None:
        """Append ``body``; None when it is a user's receipt held back until the resume's own receipt opens a
        sealed (or repaired) chain again, after which it is written.

        Raises:
            EvidenceError: a user's body that its kind cannot read back, or one after this fit sealed the chain.
        """
        if not isinstance(body, ReceiptBody) or RECEIPT_KINDS.get(body.kind) is not type(body):
            raise TypeError(f"{type(body).__name__} is not a registered receipt body")
        self.flush()
        if not _own(body):
            _check_user_body(body)
            if self._sealed_here:
                raise EvidenceError(f"a {body.kind!r} receipt was emitted after this fit sealed the run's chain (in "
                                    "on_fit_end after the seal, or in teardown): a completed chain takes no more; "
                                    "emit it by on_fit_end (docs/receipts.md)")  # fmt: skip
            if self._awaiting_resume:
                self._until_resume.append(body)  # written right after the resume's training_run receipt
                return None
        receipt = self._write(body)
        if body.kind == "chain_seal":
            self._sealed_here = True
        elif body.kind == "training_run" and getattr(body, "event", None) == "resumed":
            self._awaiting_resume = False
            for waiting in self._until_resume:
                self._write(waiting)
            self._until_resume.clear()
        return receipt

    def _write(self, body: ReceiptBody) -> Receipt:
        return self._write_all([(body, None)])[-1]

    def _write_all(self, bodies: list[tuple[ReceiptBody, float | None]]) -> list[Receipt]:
        if self._handle is None:
            unshare(self.path)  # a run copied with hard links: its log is appended to, never the original's
        if self._torn or self._lost_newline:
            self._mend()
        receipts, head = [], self._head
        for seq, (body, created_at) in enumerate(bodies, start=self._next_seq):
            receipts.append(Receipt.seal(kind=body.kind, run_id=self.run_id, seq=seq, prev_digest=head,
                                         body=body.to_json_dict(), created_at=created_at))  # fmt: skip
            head = receipts[-1].digest
        if self._broken is not None:
            raise ReceiptWriteError(self._broken)
        if self._handle is None:
            self._handle = open(self.path, "ab", buffering=0)  # noqa: SIM115  (unbuffered: one write per call)
        data = b"".join((json.dumps(r.to_json_dict(), sort_keys=True) + "\n").encode() for r in receipts)
        offset = self._handle.seek(0, os.SEEK_END)
        try:
            written = self._handle.write(data)
            if written != len(data):
                raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)")
        except OSError as error:  # a full disk: take the partial lines back, so the log stays a chain
            with contextlib.suppress(OSError):
                self._handle.truncate(offset)
            what = "the receipt was not written and the log is intact up to it" if len(receipts) == 1 else \
                f"{len(receipts)} receipts were not written and the log is intact up to them"
            self._broken = (f"appending to {self.path} failed: {error.strerror or error}; {what} (free space, then "
                            "--ckpt_path last)")  # fmt: skip
            raise ReceiptWriteError(self._broken) from error
        self._head, self._next_seq = head, self._next_seq + len(receipts)
        return receipts

    def close(self) -> None:
        try:
            if self._broken is None:  # (a log that refused a write keeps what it holds: it is intact up to them)
                self.flush()
        finally:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def sync(self) -> None:
        """Make every appended line durable (called at checkpoints, not every step)."""
        self.flush()
        if self._handle is not None:
            self._handle.flush()
        if self.path.exists():
            fsync_path(self.path)


def _own(body: ReceiptBody) -> bool:
    """Whether ``body`` is of one of lit_psion's own kinds (written only where their place in the chain is kept)."""
    return type(body).__module__.startswith("lit_psion.")


def _check_user_body(body: ReceiptBody) -> None:
    """Refuse a user's receipt body that would not read back as itself: a value JSON cannot hold (NaN, bytes, a
    tensor), a key that is not a string (its canonical order changes on the way back, so a clean log would read as
    edited), or a field whose value is not of the field's type (verification would call it malformed)."""
    where = f"receipt kind {body.kind!r} ({type(body).__module__}.{type(body).__qualname__})"
    try:
        fields = body.to_json_dict()
        if (found := next(filter(None, (_unholdable(v, f"field {k!r}") for k, v in fields.items())), None)):
            raise EvidenceError(f"{where}: {found}, which a receipt cannot hold; emit plain str, int, finite float, "
                                "bool, None, lists and dicts with string keys")  # fmt: skip
        encoded = canonical_json(fields)
        read_back = json.loads(encoded)
    except (TypeError, ValueError, RecursionError) as error:
        raise EvidenceError(f"{where}: its body is not JSON a receipt can hold ({error}); emit plain str, int, "
                            "finite float, bool, None, lists and dicts with string keys") from error  # fmt: skip
    if canonical_json(read_back) != encoded:
        raise EvidenceError(f"{where}: its body does not read back as written (a dict key that is not a string?); "
                            "emit dicts with string keys")  # fmt: skip
    if (problem := read_back_problem(type(body), read_back)) is not None:
        raise EvidenceError(f"{where}: it would not read back ({problem}); emit values of the types its fields "
                            "declare, declare no field init=False (its value cannot be given back), and let a "
                            "__post_init__ check take values as JSON gives them back (a list for a tuple)")  # fmt: skip


def _unholdable(value: Any, where: str) -> str | None:
    """Where in ``value`` something JSON cannot hold as itself sits (a non-finite float, a dict key that is not a
    string, an object that is not JSON data), said as a path from ``where``; None when there is nothing."""
    if value is None or isinstance(value, str | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value!r}"
    if isinstance(value, list | tuple):
        return next(filter(None, (_unholdable(item, f"{where}[{i}]") for i, item in enumerate(value))), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the key {key!r}, a {type(key).__name__} (JSON keys are strings)"
            if found := _unholdable(item, f"{where}[{key!r}]"):
                return found
        return None
    return f"{where} is a {type(value).__module__}.{type(value).__qualname__}"




@runtime_checkable
class ReceiptChainHolder(Protocol):
    """What owns a fit's receipt chain among the trainer's callbacks (``lit_psion.callbacks.Receipts``)."""

    chain: ReceiptLog | None


def receipt_log(trainer: Any) -> ReceiptLog | None:
    """The fit's receipt log, if a callback is collecting one (on rank 0 only; None elsewhere or when off)."""
    for callback in trainer.callbacks:  # getattr, not isinstance(ReceiptChainHolder): called every step
        chain = getattr(callback, "chain", None)
        if isinstance(chain, ReceiptLog):
            return chain
    return None


def emit_receipt(trainer: Any, body: ReceiptBody) -> None:
    """Append ``body`` to the fit's receipt chain on rank 0 (a no-op when receipts are off)."""
    log = receipt_log(trainer)
    if log is not None and trainer.is_global_zero:
        log.append(body)
