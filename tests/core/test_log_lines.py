"""A receipt log is split into lines on ``\\n`` alone, by the verifier and by every reader after it.

``str.splitlines`` also splits on ``\\x1c``-``\\x1e``, ``\\x0b``, ``\\x0c``, ``\\x85`` and U+2028/U+2029. So two
receipts joined by one of those passed ``receipts verify`` and ``ckpt verify`` (each read them as two lines),
while ``doctor`` and ``compare`` read the file by ``\\n`` and died on it (exit 1); and a genuine receipt of a text
holding U+2028 (which canonical JSON leaves raw) would have been called malformed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core.chain import log_lines, verify_log
from lit_psion.core.receipt_log import ReceiptLog
from lit_psion.core.receipts import TrainingRunReceipt
from lit_psion.core.run import read_latest
from tests.helpers import fit

SEPARATORS = ["\x1c", "\x1d", "\x1e", "\x0b", "\x0c", "\x85", "\u2028", "\u2029"]


def test_a_receipt_holding_a_line_separator_in_its_text_verifies(tmp_path: Path) -> None:
    log = ReceiptLog(tmp_path / "receipts.jsonl", run_id="r1")
    for text in SEPARATORS:
        log.append(TrainingRunReceipt(stage_id="pretrain", event="failed", status="failed", config_digest=None,
                                      data_manifest_digest=None, model_signature=None,
                                      outcome=f"a user's message{text}with a separator"))  # fmt: skip
    log.close()
    result = verify_log(tmp_path / "receipts.jsonl", run_id="r1")
    assert result.ok and result.count == len(SEPARATORS), result


def test_log_lines_splits_on_newline_alone() -> None:
    assert log_lines("") == [] and log_lines("a\n") == ["a"] and log_lines("a\n\nb") == ["a", "", "b"]
    assert log_lines("a\x1cb\u2028c\n") == ["a\x1cb\u2028c"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "4") == 0
    return root / read_latest(root)


@pytest.mark.parametrize("separator", ["\x1c", "\x0c", "\x85", "\u2028"], ids=repr)
@pytest.mark.parametrize("command", [["receipts", "verify"], ["doctor"], ["ckpt", "verify"], ["compare"]])
def test_two_receipts_joined_by_another_line_separator_are_one_malformed_line(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, separator: str, command: list[str]
) -> None:
    copy = Path(shutil.copytree(run, tmp_path / run.name))
    lines = (copy / "receipts.jsonl").read_text(encoding="utf-8").split("\n")
    lines[3:5] = [lines[3] + separator + lines[4]]
    (copy / "receipts.jsonl").write_text("\n".join(lines), encoding="utf-8")
    capsys.readouterr()
    extra = ["--out", str(tmp_path / "compared")] if command == ["compare"] else []
    assert main([*command, str(copy), *extra]) == 5
    said = capsys.readouterr()
    assert "unexpected error" not in said.err and "line 4" in said.out + said.err, said


@pytest.mark.parametrize("command", [["receipts", "verify"], ["doctor"], ["ckpt", "verify"], ["compare"]])
def test_a_carriage_return_inside_a_receipt_line_is_malformed(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              command: list[str]) -> None:  # fmt: skip
    """JSON reads a lone \\r as whitespace, so the line verified once split on \\n alone; readers of text split it
    there, and doctor and compare died on it (exit 1)."""
    copy = Path(shutil.copytree(run, tmp_path / run.name))
    lines = (copy / "receipts.jsonl").read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b'{"body": ', b'{\r"body": ', 1)
    (copy / "receipts.jsonl").write_bytes(b"\n".join(lines))
    capsys.readouterr()
    extra = ["--out", str(tmp_path / "compared")] if command == ["compare"] else []
    assert main([*command, str(copy), *extra]) == 5
    said = capsys.readouterr()
    assert "unexpected error" not in said.err and "line 4" in said.out + said.err, said
