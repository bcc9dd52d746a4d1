"""What the CLI tells a user who names the wrong thing: a misspelt command, ``help`` as a command, and a run
directory given where its checkpoint belongs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core.run import read_latest
from tests.helpers import TINY, fit


@pytest.mark.parametrize(("word", "near"), [("ckpts", "ckpt"), ("Fit", "fit"), ("Receipts", "receipts")])
def test_a_misspelt_command_is_told_the_near_one(word: str, near: str) -> None:
    result = subprocess.run([sys.executable, "-m", "lit_psion", word], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"lit_psion: error: unknown command {word!r} (did you mean {near}?); commands")


def test_help_as_a_command_is_the_top_level_help() -> None:
    result = subprocess.run([sys.executable, "-m", "lit_psion", "help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "generate" in result.stdout and not result.stderr


def test_a_run_directory_given_as_its_checkpoint_is_told_its_own_not_the_latest(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """It said `--ckpt_path last` for any run directory: followed, that validated the root's latest run, another."""
    root = tmp_path / "runs"
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "2") == 0
    first = read_latest(root)
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "2") == 0
    capsys.readouterr()
    args = ["validate", "--config", TINY, "--trainer.default_root_dir", str(root), "--ckpt_path", str(root / first)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"give '{root / first / 'checkpoints' / 'step-000002'}' (its latest checkpoint); --ckpt_path last would " \
           f"take another run, {read_latest(root)}" in err, err  # fmt: skip
    args[-1] = str(root / read_latest(root))
    assert main(args) == 2
    assert f"give --trainer.default_root_dir '{root}' --ckpt_path last, or '" in capsys.readouterr().err
