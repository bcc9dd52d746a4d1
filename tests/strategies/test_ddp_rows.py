"""A fit of several ranks writes the loss over the whole global batch to metrics.csv, as its step receipts record
it: rank 0's own loss (its slice of the batch) was written, and ``compare`` then called every such run edited."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_psion.core import RunLayout
from lit_psion.core.run import read_latest
from tests.helpers import REPO_ROOT, TINY


@pytest.mark.slow
def test_a_two_rank_runs_rows_show_the_receipted_loss_and_compare_vouches_for_them(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}  # inherited by Lightning's rank 1
    env.pop("PL_GLOBAL_SEED", None)  # left by in-process fits
    fit = [sys.executable, "-m", "lit_psion", "fit", "--config", TINY, "--trainer.default_root_dir", str(root),
           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]  # fmt: skip
    result = subprocess.run(fit, capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    layout = RunLayout(root, read_latest(root))
    receipted = {body["step_out"]: body["loss"] for body in (json.loads(line)["body"] for line in
                 layout.receipts.read_text().splitlines()) if "step_out" in body}  # fmt: skip
    rows = [row for row in csv.DictReader(layout.metrics.open()) if row["train/loss"]]
    assert len(rows) >= 10
    # (a row's step is the step index Lightning logs at: the receipt of the step that ends there)
    assert all(float(row["train/loss"]) == receipted[int(row["step"]) + 1] for row in rows), (rows, receipted)
    compare = [sys.executable, "-m", "lit_psion", "compare", str(layout.run_dir), "--out", str(tmp_path / "compare")]
    result = subprocess.run(compare, capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
