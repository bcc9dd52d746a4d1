"""An eval receipt records the scores its validation logged, and a completed run's metrics check holds only what the
receipts vouch for.

Lightning keeps every earlier validation's names in ``trainer.callback_metrics`` during a fit, so a score logged
every k validations was recorded, stale, in each eval receipt between, as the model's score at a step where nothing
measured it; and the completed-run check then called the genuine run's metrics.csv edited ("rows were deleted").
A callback's own row written at ``global_step`` after the last step was called "past the seal" too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest

from lit_psion.cli import main
from lit_psion.core.run import read_latest
from lit_psion.models import DecoderLM
from tests.helpers import callbacks_config, fit


class ScoredOnce(DecoderLM):
    """A model that logs an extra validation score at its first validation only (an expensive metric, every k)."""

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.global_step == 6:
            self.log("val/extra", 1.25)


class FinalRow(L.Callback):
    """A callback that writes its own row at the end, at ``global_step`` (one past the last step's row)."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({"final/params": 123.0}, step=trainer.global_step)


def _evals(run: Path) -> dict[int, dict[str, Any]]:
    lines = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    return {line["body"]["step"]: line["body"]["scores"] for line in lines if line["kind"] == "eval"}


def test_a_score_logged_at_one_validation_is_in_that_eval_receipt_only(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path), "--model.class_path",
               "tests.callbacks.test_scores_of_this_validation.ScoredOnce") == 0  # fmt: skip
    run = tmp_path / read_latest(tmp_path)
    evals = _evals(run)
    assert evals[6]["val/extra"] == 1.25 and "val/extra" not in evals[12], evals
    assert set(evals[12]) >= {"val/loss", "val/perplexity"}
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 0, capsys.readouterr().out


def test_a_callbacks_own_row_after_the_last_step_is_not_a_forgery(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = callbacks_config(tmp_path / "final.json", ("tests.callbacks.test_scores_of_this_validation.FinalRow", {}))
    assert fit("--trainer.default_root_dir", str(tmp_path / "runs"), "--config", config) == 0
    run = tmp_path / "runs" / read_latest(tmp_path / "runs")
    assert "final/params" in (run / "metrics.csv").read_text().splitlines()[0]
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 0, capsys.readouterr().out


def test_a_validation_amid_an_accumulation_window_is_held_to_its_receipt(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A validation between an accumulation window's micro-batches (val_check_interval 3, accumulate 2) is receipted
    at the steps done, and Lightning files its row one step on: doctor failed the genuine run as edited."""
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.accumulate_grad_batches", "2",
               "--trainer.val_check_interval", "3", "--trainer.max_steps", "6") == 0  # fmt: skip
    run = tmp_path / read_latest(tmp_path)
    assert sorted(_evals(run)) == [1, 3, 4, 6]
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 0, capsys.readouterr().out
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0
