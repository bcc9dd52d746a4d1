"""The fix ``ckpt verify`` names for a durable checkpoint that does not verify fits what is wrong with it: a
deleted one is not told to be deleted (nor "restore it from a backup" twice), and an intact one this user may not
read is not told to be deleted at all (it said "restore it from a backup, or delete it if none holds it")."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import RunLayout
from lit_psion.core.run import read_latest
from tests.helpers import fit
from tests.test_read_only_run import _as_a_user


@pytest.fixture
def run(tmp_path: Path) -> RunLayout:
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "4",
               "--checkpoint.every_n_train_steps", "2") == 0  # fmt: skip
    return RunLayout(tmp_path, read_latest(tmp_path))


def test_a_deleted_checkpoint_is_told_to_be_restored_once(run: RunLayout, capsys: pytest.CaptureFixture) -> None:
    shutil.rmtree(run.checkpoint(4))
    capsys.readouterr()
    assert main(["ckpt", "verify", str(run.run_dir)]) == 4
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.count("restore it from a backup") == 1 and "delete it" not in line, line
    assert line.endswith("(deleted or moved)); restore it from a backup (a resume would use step-000002)")


def test_a_checkpoint_this_user_may_not_read_is_not_told_to_be_deleted(run: RunLayout) -> None:
    weights = run.checkpoint(4) / "model.safetensors"
    weights.chmod(0o000)
    try:
        done = _as_a_user([sys.executable, "-m", "lit_psion", "ckpt", "verify", str(run.run_dir)])
    finally:
        weights.chmod(0o644)
    if "Permission denied" not in done.stderr:
        pytest.skip("this user reads through a mode of 000")
    assert done.returncode == 4
    line = done.stderr.strip().splitlines()[-1]
    assert "delete it" not in line and "give this user read access to its files" in line, line


def test_a_corrupt_checkpoint_may_be_deleted_if_no_backup_holds_it(run: RunLayout,
                                                                   capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    with open(run.checkpoint(4) / "model.safetensors", "ab") as handle:
        handle.write(b"x")
    capsys.readouterr()
    assert main(["ckpt", "verify", str(run.run_dir)]) == 4
    assert "is corrupt" in (err := capsys.readouterr().err) and "restore it from a backup, or delete it if none " \
        "holds it" in err, err
