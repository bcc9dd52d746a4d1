"""The README's demo, end to end (slow: minutes): a clear drop in validation loss and a sample."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lit_psion.core import read_json
from lit_psion.core.run import read_latest
from tests.helpers import fit


@pytest.mark.slow
def test_decoder_tiny_demo_learns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path), config="configs/decoder_tiny.yaml") == 0
    run_dir = tmp_path / read_latest(tmp_path)
    assert read_json(run_dir / "run.json")["status"] == "completed"
    val = [float(r["val/loss"]) for r in csv.DictReader((run_dir / "metrics.csv").open()) if r["val/loss"]]
    assert len(val) >= 2
    assert val[-1] < val[0] - 1.0, f"validation loss should drop clearly, got {val}"
    out = capsys.readouterr().out
    assert "sample" in out and "def " in out
