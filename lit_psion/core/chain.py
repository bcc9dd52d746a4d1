"""The hash chain of receipts: the envelope and its verification (SPEC §3); the append-only log is in
:mod:`lit_psion.core.receipt_log`.

Every receipt shares one envelope: schema_version, kind, run_id, seq, prev_digest, digest,
created_at, body. ``digest`` is the sha256 of the canonical JSON of everything but ``digest``,
and ``prev_digest`` is the previous receipt's digest, so a log is a chain: editing, deleting,
reordering or truncating lines is detected by :func:`verify_log`. docs/receipts.md says what a
verified chain proves and what it cannot.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_psion.core.digest import sha256_bytes, sha256_json
from lit_psion.core.errors import EvidenceError, LitPsionError
from lit_psion.core.files import unique_keys
from lit_psion.core.layout import RUN_FILE
from lit_psion.core.receipts import RECEIPT_KINDS, read_back_problem

SCHEMA_VERSION = 2
"""2: the chain starts from a genesis bound to its run (1 started every log from zeros)."""


def genesis(run_id: str) -> str:
    """The ``prev_digest`` of a run's first receipt: binds the chain to its run id from the start."""
    return sha256_json({"genesis": run_id, "schema_version": SCHEMA_VERSION})


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
    def seal(
        *, kind: str, run_id: str, seq: int, prev_digest: str, body: dict[str, Any], created_at: float | None = None
    ) -> Receipt:
        fields = {"schema_version": SCHEMA_VERSION, "kind": kind, "run_id": run_id, "seq": seq,
                  "prev_digest": prev_digest, "created_at": time.time() if created_at is None else created_at,
                  "body": body}  # fmt: skip
        return Receipt(**fields, digest=sha256_json(fields))

    def to_json_dict(self) -> dict[str, Any]:
        # Shallow: ``body`` is already plain JSON data, and asdict's deep copy costs as much as the hashing.
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def expected_digest(self) -> str:
        record = self.to_json_dict()
        record.pop("digest")
        return sha256_json(record)


class ReceiptChainError(EvidenceError):
    """A receipt log that does not verify (exit 5)."""


class ReceiptWriteError(LitPsionError):
    """A receipt could not be appended (disk full, I/O error); the log was rolled back to its last whole receipt."""

    exit_code = 6
    failure_class = "evidence_flush_failed"


def cut_short(log: Path) -> str | None:
    """How a run's receipt log shows it lost receipts: a torn last line, or an end before run.json's head (or None)."""
    if torn_tail(log):
        return "ends in a torn line"
    try:
        head = json.loads((log.parent / RUN_FILE).read_text(encoding="utf-8")).get("receipts_head")
        digests = {json.loads(line).get("digest") for line in log_lines(log.read_text(encoding="utf-8"))}
    except (OSError, ValueError, AttributeError, RecursionError):
        return None  # the log's or the record's own verdict says what is wrong with them
    return "ends before the head run.json records" if isinstance(head, str) and head not in digests else None


def torn_tail(path: str | Path) -> bytes:
    """The unterminated, unreadable final line of a log (a torn append), or ``b""`` if there is none."""
    return torn_bytes(Path(path).read_bytes())


def torn_bytes(data: bytes) -> bytes:
    if not data or data.endswith(b"\n"):
        return b""
    tail = data[data.rfind(b"\n") + 1 :]
    try:
        parse_receipt(tail.decode("utf-8", errors="replace"))
    except (ValueError, TypeError, RecursionError):
        return tail
    return b""  # a complete receipt that only lacks its newline is not torn


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
    """``malformed``, ``torn``, ``edited``, ``duplicated``, ``deleted``, ``reordered``, ``foreign``, ``unbound``,
    ``after_seal``, ``truncated`` or ``symlink``."""
    detail: str = ""
    digests: frozenset[str] = frozenset()
    """Every digest in the verified part of the chain (to check heads recorded elsewhere)."""
    sealed: bool = False
    """The verified chain ends with a ``chain_seal`` receipt."""
    unknown_kinds: frozenset[str] = frozenset()
    """Kinds no class in this process registers (a user's, whose module is not imported): their receipts are checked
    by the chain (digest, order, run) but their fields are not."""

    def describe(self) -> str:
        if self.ok:
            unknown = ", ".join(map(repr, sorted(self.unknown_kinds)))
            fields = (f"; the fields of kind{'s' * (len(self.unknown_kinds) > 1)} {unknown} were not checked (no class "
                      "here registers it: a resume with the callback that emits it checks them)") if unknown else ""
            return f"{self.count} receipts verified, head {self.head}{fields}"
        where = f"line {self.line}" if self.line is not None else "end of log"
        return f"{where}: {self.reason}: {self.detail}"


def verify_log(
    path: str | Path, expected_head: str | None = None, run_id: str | None = None, upto: int | None = None
) -> VerifyResult:
    """Check every line of a receipt log and report the first problem.

    Args:
        path: the ``receipts.jsonl`` file.
        expected_head: a head digest recorded elsewhere (``run.json``, a checkpoint manifest); a valid
            chain that does not contain it was truncated.
        run_id: the run the log must belong to (its first receipt chains from this run's genesis).
        upto: verify only the first ``upto`` bytes (the part before a torn tail).
    """
    if Path(path).is_symlink():  # appends would land wherever it points, outside the run
        detail = "the log is a symlink, a receipt log is its own file: put the file it points to in its place"
        return VerifyResult(False, 0, "", None, "symlink", detail)
    data = Path(path).read_bytes()[:upto]
    key = (sha256_bytes(data), run_id, tuple(RECEIPT_KINDS.items()))  # a kind another class registers is re-checked
    if (result := _VERIFIED.get(key)) is None:
        result = _VERIFIED[key] = _verify_bytes(data, run_id)
        while len(_VERIFIED) > 8:
            del _VERIFIED[next(iter(_VERIFIED))]
    if result.ok and expected_head is not None and expected_head not in result.digests:
        detail = f"the recorded head {expected_head} is not in the log ({result.count} receipts remain)"
        return VerifyResult(False, result.count, result.head, None, "truncated", detail, digests=result.digests)
    if result.reason == "torn" and expected_head is not None and expected_head not in result.digests:
        detail = (f"the last line is torn, and the recorded head {expected_head} is not in the log before it "
                  f"({result.count} receipts remain): receipts the run had made durable are gone, which no kill "
                  "mid-append does and a resume does not take back; restore the log from a backup")  # fmt: skip
        return VerifyResult(False, result.count, result.head, result.line, "truncated", detail, digests=result.digests)
    return result


_VERIFIED: dict[tuple[str, str | None, tuple[tuple[str, type], ...]], VerifyResult] = {}
"""Verdicts on the exact bytes verified, by their sha256 (and the registered kinds): a resume checks the same log
for the checkpoints it receipted and for every anchor, at ~0.1 ms a receipt each time."""


def log_lines(text: str) -> list[str]:
    """A receipt log's lines, split on ``\n`` alone as they are appended: ``str.splitlines`` also splits on
    ``\x1c``-``\x1e``, ``\x85`` and U+2028/U+2029, which canonical JSON leaves raw inside a string (a genuine
    receipt of a text holding one would be two broken lines), and a line an editor joined with one would pass as two."""
    lines = text.split("\n")
    return lines[:-1] if lines and not lines[-1] else lines


def _verify_bytes(data: bytes, run_id: str | None) -> VerifyResult:
    lines = log_lines(data.decode("utf-8", errors="replace"))
    head, count, seen, sealed, previous_kind, unknown = None, 0, set(), False, None, set()
    for number, line in enumerate(lines, start=1):
        checked = _check_line(line, number, count, head, run_id, seen)
        if isinstance(checked, tuple):
            if checked[0] == "deleted" and count in _seqs(lines[number:]):  # the missing one comes later
                checked = ("reordered", f"seq {count} is expected here but comes later in the log")
            if checked[0] == "malformed" and number == len(lines) and not data.endswith(b"\n"):
                checked = ("torn", f"the last line is unterminated and unreadable ({checked[1]}), as a kill or a "
                           "full disk mid-append leaves it: a resume (--ckpt_path last) takes it back, receipted")
            return VerifyResult(False, count, head or "", number, *checked, digests=frozenset(seen))
        if (problem := _out_of_place(checked, previous_kind, sealed)) is not None:
            return VerifyResult(False, count, head or "", number, *problem, digests=frozenset(seen))
        head, count, run_id = checked.digest, count + 1, checked.run_id
        sealed = checked.kind == "chain_seal" or (sealed and checked.kind == "chain_repair")
        previous_kind = checked.kind
        seen.add(head)
        if checked.kind not in RECEIPT_KINDS:
            unknown.add(checked.kind)
    return VerifyResult(True, count, head or (genesis(run_id) if run_id else ""), digests=frozenset(seen),
                        sealed=sealed, unknown_kinds=frozenset(unknown))  # fmt: skip


def _out_of_place(receipt: Receipt, previous_kind: str | None, sealed: bool) -> tuple[str, str] | None:
    """(reason, detail) when a well-formed receipt is not what may stand here, else None."""
    body_class = RECEIPT_KINDS.get(receipt.kind)  # a user's kind unknown to this process is checked by its chain only
    if body_class is not None and (problem := read_back_problem(body_class, receipt.body)) is not None:
        name = f"{body_class.__module__}.{body_class.__qualname__}"
        changed = "" if name.startswith("lit_psion.") else (f"; {name}, registered now, does not read it: was it "
                                                            "changed? restore it as the run wrote it, or give the "
                                                            "changed body a new kind name (fields added later need "
                                                            "defaults; docs/receipts.md)")  # fmt: skip
        return "malformed", f"a {receipt.kind!r} body that is not one ({problem}{changed})"
    resuming = receipt.kind == "training_run" and receipt.body.get("event") == "resumed"
    if previous_kind == "chain_repair" and not resuming:
        return "after_seal", f"a {receipt.kind!r} receipt follows a chain repair (only the resume that made it may)"
    if sealed and not (resuming or receipt.kind == "chain_repair"):
        return "after_seal", f"a {receipt.kind!r} receipt follows the completed run's seal (only a resume may)"
    if receipt.kind == "chain_seal" and receipt.body.get("receipts") != receipt.seq:
        counted = receipt.body.get("receipts")
        return "edited", f"the seal counts {counted!r} receipts before it, the chain has {receipt.seq}"
    return None


def _check_line(
    line: str, number: int, count: int, head: str | None, run_id: str | None, seen: set[str]
) -> Receipt | tuple[str, str]:
    """The receipt on ``line`` (line ``number`` of the log) if it extends the chain, else (reason, detail)."""
    if "\r" in line.removesuffix("\r"):  # JSON takes it as whitespace; a reader of text splits the line there
        return "malformed", "a carriage return inside the line (JSON writes none: the line was edited)"
    try:
        receipt = parse_receipt(line)
        digest = receipt.expected_digest()
    except RecursionError:
        return "malformed", "not a receipt envelope (nested too deeply to parse)"
    except (ValueError, TypeError) as error:
        return "malformed", f"not a receipt envelope ({_first_words(error)})"
    if digest != receipt.digest:
        return "edited", f"content does not match its digest {receipt.digest}"
    if run_id is not None and receipt.run_id != run_id:
        return "foreign", (f"run_id {receipt.run_id!r} in a log of run {run_id!r} (copied in from another run; or the "
                           f"run directory was renamed: if so, rename it back to {receipt.run_id!r})")
    if head is None:  # the first receipt: it must chain from its own run's genesis
        head = genesis(receipt.run_id)
        if receipt.seq == 0 and receipt.prev_digest != head:
            return "unbound", f"the first receipt does not chain from the genesis of run {receipt.run_id!r}"
    if receipt.digest in seen:  # the same receipt twice (a line copied, an append retried by hand)
        return "duplicated", f"seq {receipt.seq} appears again: this line repeats an earlier one of the log"
    if receipt.seq > count:
        return "deleted", f"seq {receipt.seq} follows seq {count - 1}: {receipt.seq - count} receipt(s) missing"
    if receipt.seq == count and receipt.prev_digest != head and receipt.prev_digest not in seen:
        return "edited", (f"seq {receipt.seq} is in place, but its prev_digest is not the digest of line {number - 1}: "
                          f"line {number - 1} was edited and its digest recomputed, or this line's link was changed")
    if receipt.seq < count or receipt.prev_digest != head:
        why = "was seen earlier" if receipt.prev_digest in seen else "does not chain to the line before"
        return "reordered", f"seq {receipt.seq} at position {count}; its prev_digest {why}"
    return receipt


def _seqs(lines: list[str]) -> set[int]:
    seqs = set()
    for line in lines:
        try:
            seqs.add(parse_receipt(line).seq)
        except (ValueError, TypeError, RecursionError):
            continue
    return seqs


ENVELOPE_TYPES: dict[str, type | tuple[type, ...]] = {
    "schema_version": int, "kind": str, "run_id": str, "seq": int, "prev_digest": str,
    "created_at": (int, float), "body": dict, "digest": str,
}  # fmt: skip
"""The JSON type of each envelope field (a bool is not a number)."""


def parse_receipt(line: str) -> Receipt:
    """The receipt envelope on one log line, its fields of the types the envelope declares.

    Raises:
        ValueError: the line is not JSON, holds a non-finite number (``NaN``, ``Infinity``: canonical JSON has
            none, so no sealed receipt does), or a field of the wrong type.
        TypeError: the line is not an object with exactly the envelope's fields.
        RecursionError: the line is nested too deeply to parse.
    """
    record = json.loads(line, parse_constant=_refuse_constant, object_pairs_hook=unique_keys)
    if not isinstance(record, dict):
        raise TypeError(f"a JSON {type(record).__name__}, not an object")
    receipt = Receipt(**record)
    for name, expected in ENVELOPE_TYPES.items():
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ValueError(f"{name} is {_first_words(repr(value))}, not {getattr(expected, '__name__', 'a number')}")
    return receipt


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"the non-finite number {name}")


def _first_words(error: BaseException | str, limit: int = 120) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."


def batch_digest(sample_ids: Sequence[int], cursor: Sequence[int] | None) -> str:
    """sha256 of the sample ids a batch holds and the cursor it consumed (the data a step saw)."""
    return sha256_json({"sample_ids": list(sample_ids), "cursor": list(cursor or ())})
