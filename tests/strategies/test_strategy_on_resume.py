"""The strategy a run trained with, on a resume: one that would train on the batches its transactional strategy
skip-listed is refused, and a change of strategy or policy is warned about and recorded.

Resumed with the strategy left off (``--trainer.strategy auto``, or ``ddp``), the skip list was not read: the steps
after the resume trained on the rolled-back batches, exit 0, with no warning, and ``doctor`` passed the run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lit_psion.core import RunLayout
from lit_psion.core.run import read_latest
from tests.helpers import fit

ROLLS_EVERY_STEP = ("--trainer.strategy", "transactional", "--trainer.strategy.policy.grad_norm_max", "0.0001")


@pytest.fixture(scope="module")
def listed_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 4 committed steps, then a resume whose every step rolled back until it stopped (exit 7)."""
    root = tmp_path_factory.mktemp("listed")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "4", "--trainer.strategy",
               "transactional") == 0  # fmt: skip
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "20", "--ckpt_path", "last",
               *ROLLS_EVERY_STEP) == 7  # fmt: skip
    assert json.loads(RunLayout(root, read_latest(root)).skip_list.read_text())["batches"]
    return root


@pytest.fixture
def listed(listed_once: Path, tmp_path: Path) -> RunLayout:
    shutil.copytree(listed_once, tmp_path / "runs")
    return RunLayout(tmp_path / "runs", read_latest(tmp_path / "runs"))


def _files(layout: RunLayout) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in layout.run_dir.iterdir() if path.is_file()}


@pytest.mark.parametrize("strategy", [(), ("--trainer.strategy", "auto"), ("--trainer.strategy", "single_device")],
                         ids=["left off", "auto", "single_device"])  # fmt: skip
def test_a_resume_that_would_train_on_skip_listed_batches_is_refused(listed: RunLayout, capsys: pytest.CaptureFixture,
                                                                     strategy: tuple[str, ...]) -> None:  # fmt: skip
    before = _files(listed)
    resume = ("--trainer.default_root_dir", str(listed.root), "--trainer.max_steps", "12", "--ckpt_path", "last")
    capsys.readouterr()
    assert fit(*resume, *strategy) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion:")]
    assert f"run {listed.run_id} skip-lists " in line and "resume it with --trainer.strategy transactional" in line
    assert _files(listed) == before  # run.json, config.yaml and the receipts as they were
    assert fit(*resume, "--trainer.strategy", "transactional") == 0  # the strategy that reads it goes on



def _changed(layout: RunLayout) -> list[list]:
    """The changed_settings of the run's last resumed receipt."""
    lines = [json.loads(line) for line in layout.receipts.read_text().splitlines()]
    return [line["body"]["changed_settings"] for line in lines if line["body"].get("event") == "resumed"][-1]


def test_a_resume_that_changes_the_strategy_or_its_policy_is_warned_about_and_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Its resumed receipt recorded only trainer.max_steps: a policy's limits and the strategy itself decide which
    steps roll back, as a model or data setting decides what is learned."""
    root = ("--trainer.default_root_dir", str(tmp_path))
    assert fit(*root, "--trainer.max_steps", "4", "--trainer.strategy", "transactional") == 0
    layout = RunLayout(tmp_path, read_latest(tmp_path))
    capsys.readouterr()
    assert fit(*root, "--trainer.max_steps", "6", "--ckpt_path", "last", "--trainer.strategy", "transactional",
               "--trainer.strategy.policy.rollback_tol", "0.5") == 0  # fmt: skip
    assert "(trainer.strategy.policy.rollback_tol: 0.2 -> 0.5)" in capsys.readouterr().err
    assert ["trainer.strategy.policy.rollback_tol", 0.2, 0.5] in _changed(layout)
    assert fit(*root, "--trainer.max_steps", "8", "--ckpt_path", "last", "--trainer.strategy", "transactional",
               "--trainer.strategy.policy.rollback_tol", "0.5") == 0  # fmt: skip
    assert _changed(layout) == [["trainer.max_steps", 6, 8]]  # the same strategy, given the same way: no change
    assert fit(*root, "--trainer.max_steps", "10", "--ckpt_path", "last") == 0  # left off (nothing skip-listed)
    assert "trainer.strategy: 'TransactionalStrategy' -> 'auto'" in capsys.readouterr().err
    assert ["trainer.strategy", "TransactionalStrategy", "auto"] in _changed(layout)
