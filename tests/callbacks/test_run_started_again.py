"""A run started again in place: ``LIT_PSION_RUN_ID`` naming a run whose earlier attempt died before its first
checkpoint trains it again from step 0, in the same directory, as its next attempt."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import RunLayout, read_json
from lit_psion.core.run import read_latest
from tests.helpers import TINY, callbacks_config, fit, fit_subprocess

CORPUS = Path("fixtures/tiny_corpus.txt")


def _steps(layout: RunLayout) -> list[int]:
    with open(layout.metrics, newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("data", ["same", "changed"])
def test_a_run_started_again_in_place_counts_the_attempt_and_keeps_no_rows_of_the_dead_one(
    data: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It kept the dead attempt's metrics rows (steps 0-7, then 0-3 again: compare and the dashboard read both),
    said attempts 1, and trained on changed text under the run's id without a word."""
    text = tmp_path / "text.txt"
    shutil.copy(CORPUS, text)
    args = ["--trainer.default_root_dir", str(tmp_path / "runs"), "--data.files", str(text),
            "--checkpoint.every_n_train_steps", "1000"]  # fmt: skip
    kill = callbacks_config(tmp_path / "kill.json", ("KillAt", {"step": 8}))
    killed = fit_subprocess(*args, "--config", kill, config=TINY)
    assert killed.returncode == -9, killed.stderr[-2000:]
    layout = RunLayout(tmp_path / "runs", read_latest(tmp_path / "runs"))
    assert not layout.pointer.exists() and max(_steps(layout)) >= 6  # rows of the dead attempt, no checkpoint
    before = read_json(layout.data_manifest)["digest"]
    if data == "changed":
        text.write_text(text.read_text() + "\n\nA paragraph the first attempt never read.\n")
    monkeypatch.setenv("LIT_PSION_RUN_ID", layout.run_id)
    capsys.readouterr()
    assert fit(*args, "--trainer.max_steps", "4") == 0
    err = capsys.readouterr().err
    assert f"run {layout.run_id} starts again from step 0 (attempt 2; its earlier attempt left no checkpoint)" in err
    after = read_json(layout.data_manifest)["digest"]
    assert (f"on other data than then (data manifest {before[:16]}... -> {after[:16]}...)" in err) == (
        data == "changed")  # fmt: skip
    assert read_json(layout.run_file)["attempts"] == 2
    steps = _steps(layout)
    assert steps == sorted(set(steps)) and max(steps) < 4, steps  # this attempt's rows alone
    monkeypatch.delenv("LIT_PSION_RUN_ID")
    assert main(["doctor", str(layout.run_dir)]) == 0
    assert main(["receipts", "verify", str(layout.run_dir)]) == 0
