"""Step receipts held and written together: the log reads exactly as if each had been written when it was given."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lit_psion.core.chain import ReceiptWriteError, verify_log
from lit_psion.core.receipt_log import ReceiptLog
from lit_psion.core.receipts import EvalReceipt
from tests.core.test_receipts import step
from tests.helpers import HalfThenFull

EVAL = EvalReceipt(stage_id="pretrain", step=3, split="val", data_manifest_digest=None, policy_revision=None,
                   scores={"loss": 2.0})  # fmt: skip


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    return clock


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def held_log(path: Path, n: int = 4, seconds: float = 3600.0) -> ReceiptLog:
    return ReceiptLog(path, run_id="run-a", flush_every_n_steps=n, flush_every_seconds=seconds)


def test_held_receipts_are_written_together_in_order_once_n_wait(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    log = held_log(path)
    for i in range(3):
        log.defer(lambda i=i: step(i))
    assert records(path) == []
    log.defer(lambda: step(3))
    assert [r["body"]["step_out"] for r in records(path)] == [1, 2, 3, 4]
    assert [r["seq"] for r in records(path)] == [0, 1, 2, 3]
    result = verify_log(path, run_id="run-a")
    assert result.ok and result.head == records(path)[-1]["digest"]


READS_AND_WRITES: list[tuple[str, Callable[[ReceiptLog], Any]]] = [
    ("another receipt", lambda log: log.append(EVAL)),
    ("the head (a checkpoint's manifest records it)", lambda log: log.head),
    ("the next seq (a seal counts the receipts)", lambda log: log.next_seq),
    ("a sync (at a checkpoint)", lambda log: log.sync()),
    ("a close (the fit's teardown)", lambda log: log.close()),
]


@pytest.mark.parametrize(("name", "touch"), READS_AND_WRITES, ids=[r[0] for r in READS_AND_WRITES])
def test_anything_that_reads_or_extends_the_chain_writes_the_held_ones_first(
    tmp_path: Path, name: str, touch: Callable[[ReceiptLog], Any]
) -> None:
    path = tmp_path / "receipts.jsonl"
    log = held_log(path, n=100)
    for i in range(3):
        log.defer(lambda i=i: step(i))
    got = touch(log)
    written = records(path)
    assert [r["kind"] for r in written][:3] == ["trainer_step"] * 3
    if name == "another receipt":
        assert written[-1]["kind"] == "eval" and written[-1]["seq"] == 3  # after the steps given before it
    if isinstance(got, str):
        assert got == written[-1]["digest"]
    if isinstance(got, int) and not isinstance(got, bool):
        assert got == len(written)
    assert verify_log(path, run_id="run-a").ok


def test_a_held_receipt_keeps_the_time_it_was_given(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "receipts.jsonl"
    log = held_log(path, n=100)
    for i, at in enumerate((1000.0, 1000.2, 1000.4)):
        clock.now = at
        log.defer(lambda i=i: step(i))
    clock.now = 2000.0
    log.append(EVAL)
    assert [r["created_at"] for r in records(path)] == [1000.0, 1000.2, 1000.4, 2000.0]


def test_the_oldest_having_waited_the_seconds_writes_them_however_few(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "receipts.jsonl"
    log = held_log(path, n=100, seconds=1.0)
    log.defer(lambda: step(0))
    clock.now += 0.9
    log.defer(lambda: step(1))
    assert records(path) == []
    clock.now += 0.2
    log.defer(lambda: step(2))
    assert [r["body"]["step_out"] for r in records(path)] == [1, 2, 3]


@pytest.mark.parametrize(("n", "seconds"), [(1, 3600.0), (100, 0.0)], ids=["one a write", "no wait"])
def test_either_bound_at_its_least_writes_each_receipt_as_it_is_given(tmp_path: Path, n: int, seconds: float) -> None:
    path = tmp_path / "receipts.jsonl"
    log = held_log(path, n=n, seconds=seconds)
    for i in range(3):
        log.defer(lambda i=i: step(i))
        assert len(records(path)) == i + 1


def test_a_full_disk_under_a_held_batch_takes_every_line_back_and_the_close_after_it_is_quiet(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    log = held_log(path, n=3)
    log.append(EVAL)
    before = path.read_bytes()
    log._handle = HalfThenFull(log._handle)
    log.defer(lambda: step(0))
    log.defer(lambda: step(1))
    with pytest.raises(ReceiptWriteError, match="3 receipts were not written and the log is intact up to them"):
        log.defer(lambda: step(2))
    assert path.read_bytes() == before
    with pytest.raises(ReceiptWriteError):
        log.append(EVAL)  # a log that refused a write takes no more
    log.close()  # the fit's teardown after the failure raises nothing more
    assert path.read_bytes() == before and verify_log(path, run_id="run-a").ok


def test_a_wait_past_the_seconds_is_written_when_asked_with_no_new_receipt(tmp_path: Path, clock: Clock) -> None:
    """A fit asks at every step's start: steps before a long pause (a slow batch, a user's hook) are not held
    through it."""
    path = tmp_path / "receipts.jsonl"
    log = held_log(path, n=100, seconds=1.0)
    log.defer(lambda: step(0))
    log.flush_if_due()
    assert records(path) == []
    clock.now += 1.5
    log.flush_if_due()
    assert [r["body"]["step_out"] for r in records(path)] == [1]


def test_a_receipt_that_cannot_be_built_leaves_every_held_one_held_and_the_log_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    log = held_log(path, n=100)
    log.append(EVAL)
    before = path.read_bytes()
    failing = [True]

    def third() -> Any:
        if failing[0]:
            raise ValueError("cannot build it")
        return step(2)

    log.defer(lambda: step(0))
    log.defer(lambda: step(1))
    log.defer(third)
    with pytest.raises(ValueError, match="cannot build it"):
        log.flush()
    assert path.read_bytes() == before
    failing[0] = False
    log.close()
    assert [r["body"].get("step_out") for r in records(path)] == [None, 1, 2, 3]
    assert verify_log(path, run_id="run-a").ok
    assert log._handle is None
