"""The README's demo, end to end (slow: minutes): a clear drop in validation loss and a sample."""

from __future__ import annotations

import csv
import math
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
    uniform = math.log(2048)  # the loss of a model that knows nothing, over decoder_tiny's BPE vocabulary
    assert len(val) >= 2 and val == sorted(val, reverse=True), f"validation loss should fall at every check: {val}"
    assert val[-1] < 0.6 * uniform, f"validation loss {val[-1]:.3f} should be far below uniform {uniform:.3f}"
    out = capsys.readouterr().out
    assert "sample" in out and "def " in out
