"""Hash-chained receipts: every tampering of a log is caught, named by line and reason."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest

from lit_psion.core.chain import ReceiptChainError, genesis, verify_log
from lit_psion.core.errors import EvidenceError
from lit_psion.core.receipt_log import ReceiptLog
from lit_psion.core.receipts import (
    RECEIPT_KINDS,
    CheckpointReceipt,
    EvalReceipt,
    ReceiptBody,
    TrainerStepReceipt,
    register_receipt,
)


def step(n: int) -> TrainerStepReceipt:
    return TrainerStepReceipt(stage_id="pretrain", step_in=n, step_out=n + 1, batch_digest=f"{n:064x}",
                              cursor=(0, 8 * (n + 1)), loss=2.5 - n / 10, lr=1e-3, optimizer="adamw")  # fmt: skip


def write_log(path: Path, n: int = 6) -> str:
    log = ReceiptLog(path, run_id="run-a")
    for i in range(n):
        log.append(step(i))
    log.append(EvalReceipt(stage_id="pretrain", step=n, split="val", data_manifest_digest=None,
                           policy_revision=None, scores={"loss": 2.0}))  # fmt: skip
    return log.head


def test_a_clean_log_verifies_and_chains_from_genesis(tmp_path: Path) -> None:
    head = write_log(tmp_path / "r.jsonl")
    result = verify_log(tmp_path / "r.jsonl", expected_head=head)
    assert result.ok and result.count == 7 and result.head == head
    first = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert first["prev_digest"] == genesis("run-a") and first["seq"] == 0 and first["kind"] == "trainer_step"
    assert set(first) == {"schema_version", "kind", "run_id", "seq", "prev_digest", "digest", "created_at", "body"}


def _edit(lines: list[str]) -> list[str]:
    record = json.loads(lines[2])
    record["body"]["loss"] = 0.01
    return [*lines[:2], json.dumps(record), *lines[3:]]


def _edit_and_rehash_nothing_else(lines: list[str]) -> list[str]:
    record = json.loads(lines[4])
    record["run_id"] = "run-b"
    return [*lines[:4], json.dumps(record), *lines[5:]]


TAMPERING: list[tuple[str, Callable[[list[str]], list[str]], int | None, str]] = [
    ("edit a field", _edit, 3, "edited"),
    ("edit the envelope", _edit_and_rehash_nothing_else, 5, "edited"),
    ("delete a line", lambda lines: lines[:3] + lines[4:], 4, "deleted"),
    ("swap two lines", lambda lines: [*lines[:2], lines[3], lines[2], *lines[4:]], 3, "reordered"),
    ("duplicate a line", lambda lines: [*lines[:3], lines[2], *lines[3:]], 4, "duplicated"),
    ("truncate the tail", lambda lines: lines[:-2], None, "truncated"),
    ("garbage line", lambda lines: [*lines[:1], "{not json", *lines[1:]], 2, "malformed"),
]


@pytest.mark.parametrize(("name", "tamper", "line", "reason"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_tampering_is_caught(name: str, tamper: Callable, line: int | None, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    head = write_log(path)
    path.write_text("\n".join(tamper(path.read_text().splitlines())) + "\n")
    result = verify_log(path, expected_head=head)
    assert not result.ok
    assert (result.line, result.reason) == (line, reason), result.describe()


@pytest.mark.parametrize(("name", "tamper", "line", "reason"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_a_verdict_remembered_for_the_same_bytes_never_covers_other_bytes(
    name: str, tamper: Callable, line: int | None, reason: str, tmp_path: Path
) -> None:
    """A process remembers verdicts by the sha256 of the bytes verified (a resume checks one log three times): a
    log verified once and then tampered with is judged anew, and a remembered verdict still checks the head asked
    for."""
    path = tmp_path / "r.jsonl"
    head = write_log(path)
    original = path.read_bytes()
    assert verify_log(path, expected_head=head).ok
    path.write_text("\n".join(tamper(path.read_text().splitlines())) + "\n")
    result = verify_log(path, expected_head=head)
    assert (result.ok, result.line, result.reason) == (False, line, reason), result.describe()
    path.write_bytes(original)
    assert verify_log(path, expected_head=head).ok
    assert verify_log(path, expected_head="0" * 64).reason == "truncated"  # the same bytes, another anchor


def test_appending_continues_the_chain_and_refuses_a_broken_log(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    write_log(path, n=2)
    log = ReceiptLog(path, run_id="run-a")
    assert log.next_seq == 3
    log.append(step(9))
    assert verify_log(path, expected_head=log.head).ok
    path.write_text(path.read_text().replace('"loss": 2.5', '"loss": 9.5'))
    with pytest.raises(ReceiptChainError, match="line 1: edited"):
        ReceiptLog(path, run_id="run-a")


def test_a_symlinked_log_is_refused_never_followed(tmp_path: Path) -> None:
    """A run's receipts.jsonl pointing outside the run verified, and a resume appended the chain out there."""
    outside = tmp_path / "outside.jsonl"
    write_log(outside, n=2)
    before = outside.read_bytes()
    link = tmp_path / "run" / "receipts.jsonl"
    link.parent.mkdir()
    link.symlink_to(outside)
    result = verify_log(link, run_id="run-a")
    assert not result.ok and result.reason == "symlink", result
    with pytest.raises(ReceiptChainError, match="symlink: the log is a symlink"):
        ReceiptLog(link, run_id="run-a")
    assert outside.read_bytes() == before


def test_bodies_are_frozen_and_registered_once() -> None:
    receipt = CheckpointReceipt(
        stage_id="pretrain", step=3, checkpoint="checkpoints/step-000003", manifest_digest=None,
        object_digest=None, writer="rank0", durability="durable",
    )  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        receipt.step = 4  # type: ignore[misc]
    assert {"training_run", "trainer_step", "checkpoint", "eval"} <= RECEIPT_KINDS.keys()
    with pytest.raises(ValueError, match="already registered"):
        register_receipt(CheckpointReceipt)


def test_an_unregistered_body_cannot_be_appended(tmp_path: Path) -> None:
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Stray(ReceiptBody):
        kind: ClassVar[str] = "stray"

    with pytest.raises(TypeError, match="not a registered receipt body"):
        ReceiptLog(tmp_path / "r.jsonl", run_id="x").append(Stray())


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UserNote(ReceiptBody):
    """A user's own evidence, as docs/receipts.md shows how to add it."""

    kind: ClassVar[str] = "test_user_note"
    step: int
    value: float
    detail: object = None


register_receipt(UserNote)

JSON_DICT_BODIES = [step(3), UserNote(step=1, value=1.0), UserNote(step=1, value=1.0, detail={"a": [1, 2]}),
                    UserNote(step=1, value=1.0, detail=(1, [2])), UserNote(step=1, value=1.0, detail=(1, "b"))]


@pytest.mark.parametrize("body", JSON_DICT_BODIES, ids=["step", "scalars", "dict", "tuple of a list", "flat tuple"])
def test_a_bodys_json_dict_is_asdicts_and_holds_none_of_its_mutable_values(body: ReceiptBody) -> None:
    """Scalar bodies take a shallow path (every step's receipt); it must give what ``dataclasses.asdict`` gives,
    and a body holding a list or dict must still be copied, so editing the dict cannot edit the body."""
    got = body.to_json_dict()
    assert got == dataclasses.asdict(body) and list(got) == [f.name for f in dataclasses.fields(body)]
    detail = getattr(body, "detail", None)
    if isinstance(detail, dict) or (isinstance(detail, tuple) and any(isinstance(v, list) for v in detail)):
        assert got["detail"] is not detail and got["detail"] == detail


NOT_READ_BACK = [  # (a user's body, what the refusal names): each used to be written, and the log then failed
    (UserNote(step=1, value=1.0, detail={2: "a", 10: "b"}), "field 'detail' has the key 2, a int"),  # read as edited
    (UserNote(step=1, value=1.0, detail={1: 0.5, 2: 0.7}), "field 'detail' has the key 1, a int"),  # written as "1"
    (UserNote(step=1, value=1.0, detail={1: "a", "1": "b"}), "field 'detail' has the key 1, a int"),
    (UserNote(step=1, value=None), "field 'value' is None, not float"),  # verify with the kind known: malformed
    (UserNote(step=True, value=1.0), "field 'step' is True, not int"),
    (UserNote(step=1, value=float("nan")), "field 'value' is nan"),  # exit 1, naming nothing
    (UserNote(step=1, value=1.0, detail={"a": [1.0, float("inf")]}), r"field 'detail'\['a'\]\[1\] is inf"),
    (UserNote(step=1, value=1.0, detail=b"raw"), "field 'detail' is a builtins.bytes"),
    (UserNote(step=1, value=1.0, detail={1, 2}), "field 'detail' is a builtins.set"),
    (UserNote(step=1, value=1.0, detail=datetime.date(2026, 12, 5)), "field 'detail' is a datetime.date"),
]


@pytest.mark.parametrize(("body", "says"), NOT_READ_BACK, ids=["int keys", "int keys in order", "mixed keys",
                                                                "None float", "bool int", "nan", "nested inf",
                                                                "bytes", "set", "date"])  # fmt: skip
def test_a_user_body_that_would_not_read_back_as_itself_is_refused_unwritten(tmp_path: Path, body: ReceiptBody,
                                                                              says: str) -> None:  # fmt: skip
    from lit_psion.core.errors import EvidenceError

    path = tmp_path / "r.jsonl"
    write_log(path, n=2)
    before = path.read_bytes()
    with pytest.raises(EvidenceError, match=f"receipt kind 'test_user_note' .*{says}"):
        ReceiptLog(path, run_id="run-a").append(body)
    assert path.read_bytes() == before and verify_log(path, run_id="run-a").ok


def test_a_user_receipt_waits_for_the_resume_of_a_sealed_chain_and_is_refused_after_this_fits_seal(
    tmp_path: Path,
) -> None:
    """Emitted at on_train_start of a resume, it landed before the resume's own receipt, after the seal; emitted in
    teardown, after this fit's seal. Either way the completed run no longer verified, nor could it be resumed."""
    from lit_psion.core.errors import EvidenceError
    from lit_psion.core.receipts import ChainSealReceipt, TrainingRunReceipt

    def run_receipt(event: str) -> TrainingRunReceipt:
        return TrainingRunReceipt(stage_id="pretrain", event=event, status="active", config_digest="c",
                                  data_manifest_digest=None, model_signature=None)  # fmt: skip

    path = tmp_path / "r.jsonl"
    log = ReceiptLog(path, run_id="run-a")
    log.append(step(0))
    log.append(ChainSealReceipt(stage_id="pretrain", step=1, receipts=log.next_seq))
    with pytest.raises(EvidenceError, match="emitted after this fit sealed the run's chain"):
        log.append(UserNote(step=1, value=1.0))
    resumed = ReceiptLog(path, run_id="run-a")
    assert resumed.append(UserNote(step=1, value=2.0)) is None  # held back: the resume's receipt comes first
    resumed.append(run_receipt("resumed"))
    resumed.append(step(1))
    kinds = [json.loads(line)["kind"] for line in path.read_text().splitlines()]
    assert kinds == ["trainer_step", "chain_seal", "training_run", "test_user_note", "trainer_step"]
    assert verify_log(path, run_id="run-a").ok


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UserCount(ReceiptBody):
    kind: ClassVar[str] = "test_user_count"
    count: int


def test_verify_says_which_kinds_it_checked_by_their_chain_alone_and_a_changed_class_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`receipts verify` runs without a user's modules, so it cannot check their kinds' fields: it said a plain "ok"
    where a resume, with the callback's class registered, refused the log; now it says what it did not check. And
    the resume's refusal names the class that no longer reads what it wrote."""
    path = tmp_path / "r.jsonl"
    log = ReceiptLog(path, run_id="run-u")
    log.append(step(0))
    log.append(UserCount(count=3))
    assert verify_log(path).describe() == f"2 receipts verified, head {log.head}"
    monkeypatch.delitem(RECEIPT_KINDS, "test_user_count")  # a process that never imported the module
    said = verify_log(path).describe()
    assert said.startswith("2 receipts verified") and "the fields of kind 'test_user_count' were not checked" in said

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class UserCountChanged(ReceiptBody):  # the user's class after an edit: count is now a str
        kind: ClassVar[str] = "test_user_count"
        count: str

    monkeypatch.setitem(RECEIPT_KINDS, "test_user_count", UserCountChanged)
    result = verify_log(path)
    assert not result.ok and result.reason == "malformed"
    assert "UserCountChanged, registered now, does not read it" in result.detail
    assert "restore it as the run wrote it, or give the changed body a new kind name" in result.detail


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UserDerived(ReceiptBody):
    """A user's body with a field its constructor does not take: it is written, but would not read back."""

    kind: ClassVar[str] = "test_user_derived"
    count: int
    doubled: int = dataclasses.field(init=False, default=0)


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UserChecked(ReceiptBody):
    """A user's body whose check refuses what JSON gives back (a list for its tuple)."""

    kind: ClassVar[str] = "test_user_checked"
    pair: tuple[int, int]

    def __post_init__(self) -> None:
        if not isinstance(self.pair, tuple):
            raise ValueError("pair must be a tuple")


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UserTolerant(ReceiptBody):
    """The same check written to take JSON's list: it reads back, so it is taken."""

    kind: ClassVar[str] = "test_user_tolerant"
    pair: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "pair", tuple(self.pair))


@pytest.mark.parametrize(("body", "says"), [
    (UserDerived(count=2), "unexpected keyword argument 'doubled'"),
    (UserChecked(pair=(1, 2)), "ValueError: pair must be a tuple"),
], ids=["init=False field", "__post_init__ check"])  # fmt: skip
def test_a_user_body_that_would_not_read_back_through_its_class_is_refused_unwritten(
    tmp_path: Path, body: ReceiptBody, says: str
) -> None:
    """Emitted, such a body was written; the next resume, with the same unchanged class, refused the log (exit 5, or
    exit 1 for the ValueError) while `receipts verify`, without the class, said ok."""
    path = tmp_path / "r.jsonl"
    log = ReceiptLog(path, run_id="run-u")
    log.append(step(0))
    with pytest.raises(EvidenceError, match="it would not read back") as refused:
        log.append(body)
    assert says in str(refused.value) and "init=False" in str(refused.value)
    assert len(path.read_text().splitlines()) == 1 and verify_log(path).ok
    log.append(UserTolerant(pair=(1, 2)))
    assert verify_log(path).ok


def test_a_log_whose_body_its_class_refuses_with_any_error_is_malformed_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receipt written before the class gained a check that raises ValueError: verification said exit 1."""
    path = tmp_path / "r.jsonl"
    log = ReceiptLog(path, run_id="run-u")
    log.append(step(0))
    log.append(UserTolerant(pair=(1, 2)))
    monkeypatch.setitem(RECEIPT_KINDS, "test_user_tolerant", UserChecked)
    result = verify_log(path)
    assert not result.ok and result.reason == "malformed" and "ValueError: pair must be a tuple" in result.detail
