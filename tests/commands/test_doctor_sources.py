"""`doctor` reads a run's data as a resume started here would: a glob that now matches another file fails it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core.run import read_latest
from tests.helpers import fit

TEXT = Path("fixtures/tiny_corpus.txt").read_text()


def _two_files(directory: Path) -> str:
    directory.mkdir()
    paragraphs = TEXT.split("\n\n")
    half = len(paragraphs) // 2
    (directory / "a.txt").write_text("\n\n".join(paragraphs[:half]))
    (directory / "b.txt").write_text("\n\n".join(paragraphs[half:]))
    return str(directory / "*.txt")


@pytest.mark.parametrize(("added", "max_bytes", "fails"), [
    ("0.txt", None, True),  # read first: every later file moves
    ("c.txt", None, True),  # read last
    ("c.txt", "cap", False),  # past max_bytes: the resume reads what the run did
    ("c.md", None, False),  # not matched
])  # fmt: skip
def test_a_glob_that_now_matches_another_file_fails_the_doctor_as_the_resume_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, added: str, max_bytes: str | None, fails: bool
) -> None:
    """`doctor` said every source matched (each file the manifest names still did), and the resume then refused
    the data for the file the glob had gained (exit 3)."""
    pattern = _two_files(tmp_path / "text")
    cap = str(sum(p.stat().st_size for p in (tmp_path / "text").iterdir()) + 10) if max_bytes else "null"
    common = ("--trainer.default_root_dir", str(tmp_path / "runs"), "--data.files", pattern, "--data.max_bytes", cap)
    assert fit(*common, "--trainer.max_steps", "3") == 0
    run = tmp_path / "runs" / read_latest(tmp_path / "runs")
    (tmp_path / "text" / added).write_text("Another paragraph, never trained on.\n\nAnd one more of them here.\n")
    capsys.readouterr()
    assert main(["doctor", str(run)]) == (3 if fails else 0)
    said = capsys.readouterr().out
    assert (f"{pattern!r} now also matches {str(tmp_path / 'text' / added)!r}" in said) == fails, said
    assert fit(*common, "--trainer.max_steps", "5", "--ckpt_path", "last") == (3 if fails else 0)


@pytest.mark.parametrize("replaced", ["a directory", "a FIFO"])
def test_a_source_that_is_now_no_file_fails_the_doctor_as_the_resume_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, replaced: str
) -> None:  # fmt: skip
    """`doctor` said such a source was "not found", ok (as a file moved away is), and the resume refused it (exit 3)."""
    pattern = _two_files(tmp_path / "text")
    common = ("--trainer.default_root_dir", str(tmp_path / "runs"), "--data.files", pattern)
    assert fit(*common, "--trainer.max_steps", "3") == 0
    run = tmp_path / "runs" / read_latest(tmp_path / "runs")
    source = tmp_path / "text" / "b.txt"
    source.unlink()
    source.mkdir() if replaced == "a directory" else os.mkfifo(source)
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 3
    assert f"FAIL data sources: {str(source)!r} is not the text the run trained on" in capsys.readouterr().out
    assert fit(*common, "--trainer.max_steps", "5", "--ckpt_path", "last") == 3
