"""Under gradient accumulation a step receipt records the step's loss, over its whole batch, and metrics.csv shows it.

The receipt recorded the step's last micro-batch's loss divided by ``accumulate_grad_batches`` (half the loss, at 2),
and metrics.csv that micro-batch's own loss: neither was the step's, and doctor and compare read the two as an edit.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lit_psion.cli import main
from lit_psion.core import RunLayout
from lit_psion.core.run import read_latest
from tests.helpers import fit


def _step_losses(layout: RunLayout) -> dict[int, float]:
    lines = [json.loads(line) for line in layout.receipts.read_text().splitlines()]
    return {line["body"]["step_out"]: line["body"]["loss"] for line in lines if line["kind"] == "trainer_step"}


def _fit(root: Path, batch_size: str, accumulate: str, *more: str) -> RunLayout:
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3", "--data.batch_size", batch_size,
               "--trainer.accumulate_grad_batches", accumulate, "--trainer.log_every_n_steps", "1", *more) == 0
    return RunLayout(root, read_latest(root))


def test_an_accumulated_steps_loss_is_its_whole_batchs(tmp_path: Path, capsys) -> None:
    whole = _step_losses(_fit(tmp_path / "whole", "16", "1"))
    for more in ((), ("--trainer.strategy", "transactional")):
        layout = _fit(tmp_path / f"halves{len(more)}", "8", "2", *more)
        halves = _step_losses(layout)
        assert abs(halves[1] - whole[1]) < 1e-3 * whole[1], (halves, whole)  # 16 samples before any update (not half)
        with layout.metrics.open(newline="") as handle:
            shown = {int(row["step"]) + 1: float(row["train/loss"]) for row in csv.DictReader(handle)
                     if row.get("train/loss")}  # fmt: skip
        assert shown == halves
        capsys.readouterr()
        assert main(["doctor", str(layout.run_dir)]) == 0
