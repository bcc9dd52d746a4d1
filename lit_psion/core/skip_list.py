"""The skip list: batches a transactional run must not train on again (``<run_dir>/skip_list.json``).

Plain Python (core): a transactional strategy adds the batches of a failing streak when it restores the
last durable checkpoint, saves the list on rank 0, and loads it again whenever it is set up, so a
resumed run skips what the first run listed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lit_psion.core import atomic_write_json, read_json
from lit_psion.core.chain import log_lines, parse_receipt
from lit_psion.core.errors import EvidenceError
from lit_psion.core.layout import RunLayout, step_of

SKIP_LIST_VERSION = 1


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SkippedBatch:
    """One skip-listed batch and why it was listed."""

    key: str
    """The batch's digest (:func:`lit_psion.strategies.transactional.batch_key`)."""
    sample_ids: tuple[int, ...] | None
    """The sample ids the batch held, when it names them."""
    step: int
    """The step that rolled back on it."""
    reasons: tuple[str, ...]
    """The rollback reason codes of that step."""

    def to_json_dict(self) -> dict[str, Any]:
        return {"key": self.key, "sample_ids": None if self.sample_ids is None else list(self.sample_ids),
                "step": self.step, "reasons": list(self.reasons)}  # fmt: skip

    @classmethod
    def from_json_dict(cls, record: dict[str, Any]) -> SkippedBatch:
        ids = record.get("sample_ids")
        return cls(key=str(record["key"]), sample_ids=None if ids is None else tuple(int(i) for i in ids),
                   step=int(record["step"]), reasons=tuple(record.get("reasons", ())))  # fmt: skip


class SkipList:
    """The skip-listed batches of one run, by key, kept in a JSON file written atomically.

    Args:
        path: The run's ``skip_list.json`` (``run_context(trainer).layout.skip_list``).
        batches: The batches already listed.
    """

    def __init__(self, path: str | Path, batches: dict[str, SkippedBatch] | None = None) -> None:
        self.path = Path(path)
        self._batches: dict[str, SkippedBatch] = dict(batches or {})

    @classmethod
    def load(cls, path: str | Path) -> SkipList:
        """The list saved at ``path``, or an empty one if there is no file yet.

        Raises:
            EvidenceError: the file is not a skip list (exit 5): it decides which batches train, so it is never
                guessed at.
        """
        path = Path(path)
        if not path.exists() and not path.is_symlink():
            return cls(path)
        try:
            if path.is_symlink() or not path.is_file():
                raise ValueError("not a regular file")
            entries = [SkippedBatch.from_json_dict(record) for record in read_json(path)["batches"]]
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise EvidenceError(f"{str(path)!r} is not a skip list ({reason[:120]}); it decides which batches "
                                "train: restore it from a backup") from error  # fmt: skip
        return cls(path, {entry.key: entry for entry in entries})

    def save(self) -> None:
        """Write the list (call on rank 0 only)."""
        batches = [entry.to_json_dict() for entry in self._batches.values()]
        atomic_write_json(self.path, {"version": SKIP_LIST_VERSION, "batches": batches})

    def add(self, entry: SkippedBatch) -> None:
        """List ``entry``; a batch listed again keeps its first entry."""
        self._batches.setdefault(entry.key, entry)

    def add_ranks(self, per_rank: list[list[SkippedBatch]]) -> None:
        """List every rank's entries (in rank order). One global batch is one entry whose slices are on different
        ranks: it lists every rank's samples, in rank order, as one process would."""
        listed: dict[str, SkippedBatch] = {}
        for rank, entries in enumerate(per_rank):
            for key, entry in {entry.key: entry for entry in entries}.items():
                first = listed.setdefault(key, entry)
                if rank and first.sample_ids is not None and entry.sample_ids is not None:
                    listed[key] = dataclasses.replace(first, sample_ids=first.sample_ids + entry.sample_ids)
        for entry in listed.values():
            self.add(entry)

    def __contains__(self, key: object) -> bool:
        return key in self._batches

    def __iter__(self) -> Iterator[SkippedBatch]:
        return iter(self._batches.values())

    def __len__(self) -> int:
        return len(self._batches)


def replayed_entries(layout: RunLayout, entries: list[SkippedBatch], resumed_at: int | None) -> list[SkippedBatch]:
    """The entries a resume from the checkpoint of step ``resumed_at`` trains again rather than skips: those listed
    after it (a kill between a restore and the next checkpoint), whose steps the replay decides, and lists, again
    as the uninterrupted run did. Not those of a streak that stopped the run for divergence (exit 7): skipping the
    batches that stopped it is how a resume gets past them (the same batches would stop it again), however many
    resumes (and pauses) later. The receipts say which streaks stopped a run, not run.json's latest status."""
    if resumed_at is None:
        return []
    stopped = _read_transactions(layout).stopped
    return [entry for entry in entries if entry.step > resumed_at and (entry.step, entry.key) not in stopped]


def resumed_step(body: dict[str, Any]) -> int | None:
    """The step of the checkpoint a ``resumed`` training_run receipt continued from (None for any other receipt)."""
    lineage = body.get("checkpoint_lineage") or ()
    if body.get("event") != "resumed" or not lineage or not isinstance(lineage[-1], str):
        return None
    return step_of(lineage[-1].split("@", 1)[0].rsplit("/", 1)[-1])


def check_skip_list(layout: RunLayout) -> tuple[list[SkippedBatch], list[SkippedBatch]]:
    """The run's skip-listed batches the receipts back, and those listed past the chain's last transaction.

    The list decides which batches a resumed run leaves out, so a batch listed by hand is data left out. Each
    entry at or before the chain's last transaction must be at a step the chain rolled back (for a failing
    streak, not a skip or a scaler overflow), and be one of the batches the receipt names there (every rank's;
    a receipt written before those were recorded names rank 0's only, and one listed batch must be it). Every
    batch the receipts record listing must be on it: a restore's streak (until a resume from an earlier
    checkpoint trains those steps again) and, by step and batch, every streak that stopped the run (skipped by
    every later resume). Entries past the last transaction are what a kill between the list's write and its
    step's receipt leaves: a resume trains those steps again, so it drops them rather than trust them.

    Raises:
        EvidenceError: the file is not a skip list, or an entry is not borne out by the receipts (exit 5).
    """
    entries = list(SkipList.load(layout.skip_list))
    walked = _read_transactions(layout)
    rolled_back, every_rank, listed, last = walked.rolled_back, walked.every_rank, walked.listed, walked.last
    if missing := sorted(listed - {entry.step for entry in entries}):
        steps = ", ".join(map(str, missing[:5]))
        raise EvidenceError(f"{str(layout.skip_list)!r} lacks the batches of step(s) {steps} that the receipts record "
                            "skip-listing (a restore's failing streak): a resume would train "
                            "on them again; restore it from a backup")  # fmt: skip
    if lost := sorted({step for step, key in walked.stopped - {(entry.step, entry.key) for entry in entries}}):
        raise EvidenceError(f"{str(layout.skip_list)!r} lacks the batches of step(s) {', '.join(map(str, lost[:5]))} "
                            "whose streak stopped the run for divergence: a resume would train on them again (and "
                            "stop again); restore it from a backup")  # fmt: skip
    backed = [entry for entry in entries if entry.step <= last]
    keys: dict[int, set[str]] = {}
    for entry in backed:
        keys.setdefault(entry.step, set()).add(entry.key)

    def borne_out(step: int, listed: set[str]) -> bool:
        return listed <= every_rank[step] if step in every_rank else bool(listed & rolled_back.get(step, set()))

    if unbound := sorted(step for step, listed in keys.items() if not borne_out(step, listed)):
        raise EvidenceError(f"{str(layout.skip_list)!r} lists batches at step(s) {', '.join(map(str, unbound[:5]))} "
                            "that the receipts do not record rolling back (listed by hand: a resume would leave "
                            "them out); restore it from a backup")  # fmt: skip
    return backed, [entry for entry in entries if entry.step > last]


@dataclasses.dataclass(slots=True)
class _Transactions:
    """What a run's transaction receipts say about its skip list."""

    rolled_back: dict[int, set[str]] = dataclasses.field(default_factory=dict)
    """step -> rank 0's batch of each rollback there."""
    every_rank: dict[int, set[str]] = dataclasses.field(default_factory=dict)
    """step -> every rank's batches, where its receipts name them all."""
    listed: set[int] = dataclasses.field(default_factory=set)
    """The steps a restore (or its absence) put on the list, which must be there."""
    stopped: set[tuple[int, str]] = dataclasses.field(default_factory=set)
    """(step, batch digest) of each batch of the streaks that stopped the run (listed by the stop, skipped by every
    later resume; by batch, for a step number a restore trains again names another batch)."""
    last: int = 0
    """The step of the chain's last transaction."""


def _read_transactions(layout: RunLayout) -> _Transactions:
    walked, streak, batches = _Transactions(), list[int](), list[tuple[int, str]]()  # since the last commit (...)
    if not layout.receipts.is_file():
        return walked
    for line in log_lines(layout.receipts.read_text(encoding="utf-8", errors="replace")):
        try:
            receipt = parse_receipt(line)
            if receipt.kind in ("training_run", "membership"):
                streak, batches = [], []  # (a streak carried over one is not counted: fewer steps, never more)
            if receipt.kind == "training_run" and (resumed := resumed_step(receipt.body)) is not None:
                walked.listed = {step for step in walked.listed if step <= resumed}  # later ones listed again
            if receipt.kind != "transaction":
                continue
            step, action = int(receipt.body["step"]), receipt.body.get("action")
            walked.last = max(walked.last, step)
            if receipt.body.get("decision") == "rollback" and action not in _NOT_LISTED:
                if (named := receipt.body.get("batch_digests")) is not None:
                    walked.every_rank.setdefault(step, set()).update(str(key) for key in named)
                walked.rolled_back.setdefault(step, set()).add(str(receipt.body.get("batch_digest")))
                streak.append(step)
                batches += [(step, str(key)) for key in named or (receipt.body.get("batch_digest"),)]
                if isinstance(action, str) and action.startswith(_LISTING):  # the list was written first
                    walked.listed.update(streak)
                elif action == "stopped":
                    walked.stopped.update(batches)
            elif receipt.body.get("decision") == "commit":
                streak, batches = [], []
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            continue  # the chain's own verdict names a bad line
    return walked


_LISTING = ("restored:", "skip_listed_no_checkpoint")
"""Rollback actions that put the failing streak on the skip list (written before their receipt)."""
_NOT_LISTED = ("skipped", "scaler_overflow")
"""Rollback actions that put no batch on the skip list (it was listed already; the grad scaler skipped it)."""
