"""Malformed evidence (run.json, receipt lines) is reported as evidence that does not verify (exit 5), never a crash."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import RunLayout, RunRecord
from lit_psion.core.chain import verify_log
from lit_psion.core.digest import sha256_json
from lit_psion.core.errors import EvidenceError
from lit_psion.core.receipt_log import ReceiptLog
from lit_psion.core.receipts import TrainerStepReceipt
from lit_psion.core.run import RunRecordError, read_latest
from tests.helpers import fit

DEEP = "[" * 100_000 + "]" * 100_000
"""Nested far past Python's recursion limit."""


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    root = tmp_path_factory.mktemp("malformed")
    with pytest.MonkeyPatch.context() as patch:  # the session's cache, as the function-scoped tests see it
        patch.setenv("LIT_PSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3") == 0
    return RunLayout(root, read_latest(root))


@pytest.fixture
def run(completed: RunLayout, tmp_path: Path) -> RunLayout:
    """A copy of the completed run (its root too, so ``--ckpt_path last`` finds it) to harm."""
    shutil.copytree(completed.root, tmp_path / "root")
    return RunLayout(tmp_path / "root", completed.run_id)


def with_field(key: str, value: object) -> Callable[[dict], str]:
    return lambda record: json.dumps({**record, key: value})


RUN_FILES = [  # (case, run.json's new text from its record, what the error says)
    ("empty", lambda record: "", "not JSON"),
    ("invalid JSON", lambda record: "{not json", "not JSON"),
    ("not UTF-8", lambda record: "\udcff", "not JSON"),
    ("a JSON list", lambda record: json.dumps([record]), "a JSON list, not an object"),
    ("a JSON string", lambda record: '"run"', "a JSON str, not an object"),
    ("nested too deeply", lambda record: DEEP, "nested too deeply"),
    ("no run_id", lambda record: json.dumps({k: v for k, v in record.items() if k != "run_id"}), "no 'run_id'"),
    ("an unknown status", with_field("status", "done"), "'status' is 'done'"),
    ("a status that is a list", with_field("status", ["completed"]), "'status' is ['completed']"),
    ("a global_step in words", with_field("global_step", "six"), "'global_step' is 'six'"),
    ("a negative global_step", with_field("global_step", -1), "'global_step' is -1"),
    ("a boolean global_step", with_field("global_step", True), "'global_step' is True"),
    ("a fractional attempts count", with_field("attempts", 1.5), "'attempts' is 1.5"),
    ("a run_id that is a number", with_field("run_id", 7), "'run_id' is 7"),
    ("a receipts_head that is an object", with_field("receipts_head", {"a": 1}), "'receipts_head' is {'a': 1}"),
    ("a created_at in words", with_field("created_at", "yesterday"), "'created_at' is 'yesterday'"),
    ("a failure that is a number", with_field("failure", 3), "'failure' is 3"),
]


def write_run_file(layout: RunLayout, make: Callable[[dict], str]) -> None:
    text = make(json.loads(layout.run_file.read_text()))
    layout.run_file.write_bytes(text.encode("utf-8", errors="surrogateescape"))


@pytest.mark.parametrize(("case", "make", "says"), RUN_FILES, ids=[c[0] for c in RUN_FILES])
def test_a_malformed_run_json_is_refused_in_one_line(run: RunLayout, case: str, make: Callable, says: str) -> None:
    write_run_file(run, make)
    with pytest.raises(RunRecordError) as raised:
        RunRecord.load(run)
    message = str(raised.value)
    assert isinstance(raised.value, EvidenceError) and raised.value.exit_code == 5
    assert says in message and str(run.run_file) in message and "\n" not in message


def test_a_well_formed_run_json_loads_with_ints_for_floats_and_unknown_keys_ignored(run: RunLayout) -> None:
    write_run_file(run, lambda record: json.dumps({**record, "created_at": 5, "added_later": [1]}))
    record = RunRecord.load(run)
    assert record.created_at == 5 and record.run_id == run.run_id and record.global_step == 3


COMMANDS = [  # (command, its arguments for a run) that read run.json
    ("receipts verify", lambda run: ["receipts", "verify", str(run.run_dir)]),
    ("doctor", lambda run: ["doctor", str(run.run_dir)]),
    ("fit --ckpt_path last", lambda run: ["fit", "--config", "fixtures/tiny.yaml", "--trainer.default_root_dir",
                                          str(run.root), "--trainer.max_steps", "6", "--ckpt_path", "last"]),
]  # fmt: skip


@pytest.mark.parametrize(("command", "argv"), COMMANDS, ids=[c[0] for c in COMMANDS])
@pytest.mark.parametrize(("case", "make", "says"), RUN_FILES[:10], ids=[c[0] for c in RUN_FILES[:10]])
def test_commands_exit_5_on_a_malformed_run_json_and_write_nothing(
    run: RunLayout, capsys: pytest.CaptureFixture, command: str, argv: Callable, case: str, make: Callable, says: str
) -> None:
    write_run_file(run, make)
    before = run.run_file.read_bytes(), run.receipts.read_bytes()
    capsys.readouterr()
    assert main(argv(run)) == 5
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert "unexpected error" not in captured.err and "Traceback" not in captured.err
    if command == "doctor":  # every verdict printed, run.json's among them, and the rest still judged
        assert any(line.startswith("FAIL run.json") and says in line for line in captured.out.splitlines())
        judged = {line.split(":")[0].split()[-1] for line in captured.out.splitlines()}
        assert {"receipts.jsonl", "pointer.json", "checkpoints/step-000003"} <= judged, captured.out
    else:
        assert len(lines) == 1 and lines[0].startswith("lit_psion: error:") and says in lines[0]
    assert (run.run_file.read_bytes(), run.receipts.read_bytes()) == before
    assert not (run.checkpoints / "step-000006").exists()


def reseal(field: str, value: object) -> Callable[[dict], str]:
    """A receipt with ``field`` set to ``value`` and its digest recomputed (a consistent forgery)."""

    def edit(receipt: dict) -> str:
        receipt = {**receipt, field: value}
        receipt.pop("digest")
        return json.dumps({**receipt, "digest": sha256_json(receipt)}, sort_keys=True)

    return edit


def reseal_body(field: str, value: object) -> Callable[[dict], str]:
    """A receipt whose body has ``field`` set to ``value``, re-hashed: a body that is not its kind's."""

    def edit(receipt: dict) -> str:
        return reseal("body", {**receipt["body"], field: value})(receipt)

    return edit


RECEIPT_LINES = [  # (case, the second receipt's new line from its record, what the report says)
    ("a NaN edited into the text", lambda r: json.dumps(r).replace('"body": {', '"body": {"loss": NaN, ', 1), "NaN"),
    ("an Infinity edited into the text", lambda r: json.dumps(r).replace('"seq": 1', '"seq": Infinity'), "Infinity"),
    ("a seq that is a string", reseal("seq", "1"), "seq is '1'"),
    ("a seq that is a boolean", reseal("seq", True), "seq is True"),
    ("a kind that is a list", reseal("kind", ["trainer_step"]), "kind is ['trainer_step']"),
    ("a run_id that is a number", reseal("run_id", 7), "run_id is 7"),
    ("a body that is a list", reseal("body", [1]), "body is [1]"),
    ("a created_at in words", reseal("created_at", "now"), "created_at is 'now'"),
    ("a prev_digest that is null", reseal("prev_digest", None), "prev_digest is None"),
    ("a line nested too deeply", lambda r: DEEP, "nested too deeply"),
    ("a body nested too deeply", lambda r: json.dumps(r).replace('"body": {', '"body": {"x": ' + DEEP + ", "),
     "nested too deeply"),
    ("a JSON list", lambda r: json.dumps([r]), "not an object"),
    ("a missing field", lambda r: json.dumps({k: v for k, v in r.items() if k != "seq"}), "seq"),
    ("a body field of an unknown name", reseal_body("verdict", "ok"), "verdict"),
    ("a body string that is a list", reseal_body("optimizer", ["AdamW"]), "field 'optimizer' is ['AdamW'], not str"),
    ("a body number in words", reseal_body("loss", "low"), "field 'loss' is 'low', not float"),
    ("a body number that is a boolean", reseal_body("step_out", True), "field 'step_out' is True, not int"),
    ("a body int that is a float", reseal_body("step_in", 1.5), "field 'step_in' is 1.5, not int"),
    ("a body pair of three", reseal_body("cursor", [0, 1, 2]), "field 'cursor' is [0, 1, 2]"),
    ("a body pair of words", reseal_body("cursor", ["0", "1"]), "field 'cursor' is ['0', '1']"),
    ("a body null where a value is due", reseal_body("batch_digest", None), "field 'batch_digest' is None"),
]  # fmt: skip


def three_receipt_log(path: Path, run_id: str = "r1") -> None:
    log = ReceiptLog(path, run_id=run_id)
    for step in range(1, 4):
        log.append(TrainerStepReceipt(stage_id="pretrain", step_in=step - 1, step_out=step, batch_digest="b" * 64,
                                      cursor=None, loss=2.5, lr=1e-3, optimizer="AdamW", checkpoint=None))  # fmt: skip
    log.close()


def replace_line(path: Path, number: int, make: Callable[[dict], str]) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = make(json.loads(lines[number - 1]))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(("case", "make", "says"), RECEIPT_LINES, ids=[c[0] for c in RECEIPT_LINES])
def test_a_malformed_receipt_line_is_reported_malformed(tmp_path: Path, case: str, make: Callable, says: str) -> None:
    path = tmp_path / "receipts.jsonl"
    three_receipt_log(path)
    assert verify_log(path, run_id="r1").ok
    replace_line(path, 2, make)
    result = verify_log(path, run_id="r1")
    assert (result.ok, result.line, result.reason, result.count) == (False, 2, "malformed", 1)
    assert says in result.detail and "\n" not in result.describe()


def test_a_deeply_nested_unterminated_last_line_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    three_receipt_log(path)
    path.write_bytes(path.read_bytes() + DEEP.encode())
    result = verify_log(path, run_id="r1")
    assert (result.ok, result.line, result.reason, result.count) == (False, 4, "torn", 3)
    assert "a resume (--ckpt_path last) takes it back" in result.describe()  # it named no fix


@pytest.mark.parametrize("command", ["receipts", "doctor"])
@pytest.mark.parametrize(("case", "make", "says"), RECEIPT_LINES, ids=[c[0] for c in RECEIPT_LINES])
def test_commands_exit_5_on_a_malformed_receipt_line(
    run: RunLayout, capsys: pytest.CaptureFixture, command: str, case: str, make: Callable, says: str
) -> None:
    replace_line(run.receipts, 2, make)
    capsys.readouterr()
    argv = ["receipts", "verify", str(run.run_dir)] if command == "receipts" else ["doctor", str(run.run_dir)]
    assert main(argv) == 5
    captured = capsys.readouterr()
    assert "unexpected error" not in captured.err
    report = captured.err if command == "receipts" else captured.out
    assert any("line 2: malformed" in line and says in line for line in report.splitlines())
