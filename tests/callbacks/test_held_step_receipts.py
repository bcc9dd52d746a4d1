"""A fit's step receipts are held and written a few at a time (off the step's path): a kill loses only steps after
the last checkpoint, which a resume trains again and receipts; forged checkpoints are refused as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core.audit import receipted_checkpoints
from lit_psion.core.checkpoint import resolve_checkpoint
from lit_psion.core.layout import RunLayout
from lit_psion.core.run import read_latest
from tests.helpers import callbacks_config, fit, fit_subprocess, forge_newest_checkpoint, head_of_step


@pytest.fixture(scope="module")
def killed_held(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run killed in step 9 with the default batching (its checkpoints every 3 steps, 3 and 6 receipted)."""
    root = tmp_path_factory.mktemp("killed-held")
    kill = callbacks_config(root / "kill.json", ("KillAt", {"step": 9}))
    assert fit_subprocess("--trainer.default_root_dir", str(root), "--trainer.max_steps", "12",
                          "--config", kill).returncode == -9  # fmt: skip
    return root / read_latest(root)


def steps_of(run: Path) -> list[int]:
    lines = (run / "receipts.jsonl").read_text().splitlines()
    return [json.loads(line)["body"]["step_out"] for line in lines if '"trainer_step"' in line]


def test_a_kill_loses_only_steps_after_the_last_checkpoint_and_the_resume_receipts_every_step(
    killed_held: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "runs" / killed_held.name
    shutil.copytree(killed_held.parent, run.parent)
    held = steps_of(run)
    assert held[:6] == [1, 2, 3, 4, 5, 6] and held == list(range(1, len(held) + 1)) and len(held) < 9
    assert main(["receipts", "verify", str(run)]) == 0
    assert fit("--trainer.default_root_dir", str(run.parent), "--trainer.max_steps", "12", "--ckpt_path", "last") == 0
    after = steps_of(run)
    assert after[: len(held)] == held and sorted(set(after)) == list(range(1, 13))
    assert after[len(held):] == list(range(7, 13))  # trained again from step 6's checkpoint
    times = [json.loads(line)["created_at"] for line in (run / "receipts.jsonl").read_text().splitlines()]
    assert times == sorted(times)  # each stamped when its step ended, written in order
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 0


FORGERIES = [  # (name, the step the forged copy of step 6's checkpoint claims, the step whose head it records)
    ("a step past what the chain reached", 10, 6),
    ("the next step, on step 6's head", 7, 6),
    ("an earlier head, under the next step", 7, 5),
    ("the chain's last head, under a later step", 12, None),
]


@pytest.mark.parametrize(("name", "step", "anchor"), FORGERIES, ids=[f[0] for f in FORGERIES])
def test_a_forged_newest_checkpoint_is_refused_whatever_the_kill_left_unwritten(
    killed_held: Path, tmp_path: Path, name: str, step: int, anchor: int | None
) -> None:
    run = tmp_path / killed_held.name
    shutil.copytree(killed_held, run)
    forge_newest_checkpoint(run, step, head_of_step(run, anchor if anchor else steps_of(run)[-1]))
    layout, rejected = RunLayout.of(run), []
    resolved = resolve_checkpoint(layout, rejected, quiet=True, receipted=receipted_checkpoints(layout))
    assert resolved.step == 6
    assert "did not write it" in rejected[0].reason


@pytest.mark.parametrize("settings", [("1", "0"), ("5", ".inf")], ids=["each at once", "five a write, no wait"])
def test_a_completed_fit_receipts_every_step_once_in_order_however_they_are_batched(
    tmp_path: Path, settings: tuple[str, str]
) -> None:
    n, seconds = settings
    assert fit("--trainer.default_root_dir", str(tmp_path), "--receipts.flush_every_n_steps", n,
               "--receipts.flush_every_seconds", seconds) == 0  # fmt: skip
    run = tmp_path / read_latest(tmp_path)
    assert steps_of(run) == list(range(1, 13))
    assert main(["receipts", "verify", str(run)]) == 0


BAD_SETTINGS = [
    ("flush_every_n_steps", "0", "receipts.flush_every_n_steps must be an integer >= 1, got 0"),
    ("flush_every_n_steps", "-3", "receipts.flush_every_n_steps must be an integer >= 1, got -3"),
    ("flush_every_seconds", "-1", "receipts.flush_every_seconds must be a number >= 0 (.inf: no time bound), got -1"),
    ("flush_every_seconds", ".nan", "flush_every_seconds must be a number >= 0 (.inf: no time bound), got nan"),
    ("flush_every_seconds", "nan", "receipts.flush_every_seconds: 'nan' is not a number"),
]


@pytest.mark.parametrize(("key", "value", "said"), BAD_SETTINGS, ids=[f"{s[0]}={s[1]}" for s in BAD_SETTINGS])
def test_a_bad_batching_setting_is_refused_in_one_line_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture, key: str, value: str, said: str
) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path), f"--receipts.{key}", value) == 2
    assert said in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_validation_starts_with_every_step_before_it_written(tmp_path: Path) -> None:
    """A validation can take minutes: the steps held before it are written as it starts, not after it."""
    seen = tmp_path / "seen.json"
    probe = callbacks_config(tmp_path / "probe.json", ("StepReceiptsAtValidation", {"path": str(seen)}))
    assert fit("--trainer.default_root_dir", str(tmp_path / "runs"), "--config", probe,
               "--trainer.val_check_interval", "5", "--trainer.limit_val_batches", "1") == 0  # fmt: skip
    assert json.loads(seen.read_text()) == [[5, [1, 2, 3, 4, 5]], [10, list(range(1, 11))]]
