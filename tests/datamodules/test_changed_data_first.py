"""A resume on changed data is refused as changed data even where that data fails to prepare (too small for a batch,
a block or a split): it said "batch_size 8 is larger than the 3 training samples", and only once that was followed,
that the data had changed since the checkpoint. Data that did not change keeps its own error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import read_json
from tests.helpers import REPO_ROOT, TINY

SMALL = "A few words.\n\nToo few for a batch.\n\nOr a block.\n"


def _cut(path: Path) -> None:
    path.write_text(path.read_text()[:150])


def _trained(root: Path) -> Path:
    """A completed two-step run on a copy of the tiny corpus, under ``root``."""
    shutil.copy(REPO_ROOT / "fixtures" / "tiny_corpus.txt", root / "corpus.txt")
    (root / "small.txt").write_text(SMALL)
    assert main(["fit", "--config", TINY, "--data.files", str(root / "corpus.txt"), "--trainer.max_steps", "2",
                 "--trainer.default_root_dir", str(root / "runs")]) == 0  # fmt: skip
    return root


# (flags after the resume's, a change to the data before it, what the one line says, whether it says "changed")
CASES = {
    "other_small_file": (["--data.files", "{root}/small.txt"], None, "files added: ", True),
    "trained_file_cut_short": ([], _cut, "files changed: ", True),
    "block_size_past_the_data": (["--data.block_size", "100000"], None, "block_size: 32 -> 100000", True),
    "same_data_larger_batch": (["--data.batch_size", "100000"], None, "batch_size 100000 is larger than", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_resume_on_data_that_fails_to_prepare_is_told_what_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    root = _trained(tmp_path)
    flags, change, says, changed = CASES[case]
    if change is not None:
        change(root / "corpus.txt")
    (run,) = (root / "runs").glob("2*")
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    capsys.readouterr()
    code = main(["fit", "--config", TINY, "--data.files", str(root / "corpus.txt"), "--trainer.max_steps", "4",
                 "--trainer.default_root_dir", str(root / "runs"), "--ckpt_path", "last",
                 *(flag.format(root=root) for flag in flags)])  # fmt: skip
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and says in line, line
    assert ("changed since it was written" in line) == changed, line
    if changed:  # and why the data as given would not do either
        assert "it does not prepare either: " in line and "restore the original data and settings" in line, line
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before
    assert read_json(run / "run.json")["status"] == "completed"


@pytest.mark.parametrize("command", ["validate", "fit-new"])
def test_small_data_outside_a_resume_keeps_its_own_error(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                         command: str) -> None:  # fmt: skip
    trained = _trained(tmp_path)
    # validate may evaluate a checkpoint on other text (with the run's tokenizer): its size is the problem
    resume = ["validate", "--ckpt_path", "last"] if command == "validate" else ["fit"]
    capsys.readouterr()
    code = main([*resume, "--config", TINY, "--data.files", str(trained / "small.txt"),
                 "--trainer.default_root_dir", str(trained / ("runs" if command == "validate" else "new"))])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion: error")]
    assert code == 3 and len(err) == 1 and "changed since" not in err[0] and "lower --data." in err[0], err
