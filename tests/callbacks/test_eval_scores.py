"""What an eval receipt records as a validation's scores is the model's: a callback's value under one of its names
is refused, not recorded in its place; a score of the callback's own name is recorded beside them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback

from lit_psion.core.run import read_latest
from tests.helpers import fit


class LogsAScore(Callback):
    """Logs ``value`` under ``name`` in ``hook``."""

    def __init__(self, hook: str = "on_validation_epoch_end", name: str = "val/loss", value: float = 0.25) -> None:
        self.hook, self.name, self.value = hook, name, value

    def _log(self, hook: str, pl_module: L.LightningModule, **kwargs: Any) -> None:
        if hook == self.hook:
            pl_module.log(self.name, self.value, **kwargs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log("on_validation_epoch_end", pl_module)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._log("on_validation_batch_end", pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._log("on_train_batch_end", pl_module, on_step=True, on_epoch=False)


def _fit(root: Path, hook: str, name: str) -> int:
    return fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "6",
               "--trainer.callbacks+=tests.callbacks.test_eval_scores.LogsAScore", f"--trainer.callbacks.hook={hook}",
               f"--trainer.callbacks.name={name}")  # fmt: skip


def _eval_scores(root: Path) -> list[dict[str, float]]:
    lines = (root / read_latest(root) / "receipts.jsonl").read_text().splitlines()
    return [receipt["body"]["scores"] for receipt in map(json.loads, lines) if receipt["kind"] == "eval"]


@pytest.mark.parametrize(("hook", "name"), [("on_validation_epoch_end", "val/loss"),
                                            ("on_validation_batch_end", "val/loss"),
                                            ("on_validation_epoch_end", "val/perplexity")])  # fmt: skip
def test_a_callbacks_value_under_a_models_score_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, hook: str, name: str
) -> None:
    """The eval receipt recorded the callback's 0.25 as the run's val/loss (the model's was 3.25), exit 0: it took
    every val/ value from Lightning's callback_metrics, where the last one logged under a name stands."""
    capsys.readouterr()
    assert _fit(tmp_path, hook, name) == 2
    err = capsys.readouterr().err
    assert f"self.log({name!r}, ...) in {hook} and in validation_step: one validation score logged twice" in err, err
    assert all(scores.get(name) != 0.25 for scores in _eval_scores(tmp_path))


def test_a_callbacks_own_score_is_recorded_beside_the_models(tmp_path: Path) -> None:
    assert _fit(tmp_path, "on_validation_epoch_end", "val/mine") == 0
    scores = _eval_scores(tmp_path)
    assert scores and all(s["val/mine"] == 0.25 and s["val/loss"] not in (0.25, None) for s in scores), scores


def test_a_score_name_logged_while_training_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A callback's val/loss of 0.25 logged on training steps reached metrics.csv, the fit's last line and compare
    as the run's val/loss, with no eval receipt behind it."""
    capsys.readouterr()
    assert _fit(tmp_path, "on_train_batch_end", "val/loss") == 2
    err = capsys.readouterr().err
    assert "self.log('val/loss', ...) in on_train_batch_end logs an evaluation score's name while training" in err
