"""Adapter windows learn: on tinyshakespeare's held-out text, windows of honest contributors lower the loss window
over window, a poisoning contributor in every window barely moves it, and windows come close to one centralized
LoRA run with the same steps (benchmarks/windows.py, at a smaller budget)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import subprocess_env

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare.txt"


@pytest.mark.slow
@pytest.mark.parametrize("poison", ["shuffled_labels"])  # x50 is quarantined the same way: benchmarks/windows.py
def test_windows_learn_and_a_poisoner_does_not_move_the_promoted_loss(poison: str) -> None:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is absent")
    command = [sys.executable, "benchmarks/windows.py", "--data", str(SHAKESPEARE), "--poison", poison,
               "--base-steps", "200", "--steps", "30", "--slice-samples", "480", "--held-out", "64"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200,
                          env=subprocess_env(OMP_NUM_THREADS="1"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    honest = result["honest"]["gate_loss_per_window"]
    assert all(after < before for before, after in itertools.pairwise(honest)), honest
    assert all(w["dispositions"] == {"accepted": 4} for w in result["honest"]["windows"]), result["honest"]
    for window in result["poisoned"]["windows"]:
        assert window["dispositions"] == {"accepted": 3, "quarantined": 1}, window
    assert result["poisoned_vs_honest"] <= 1.02, result
    assert result["final_loss_ratio"] <= 1.05, result
