"""The flags a refused resume names give the checkpoint its data again: following them resumes the run.

A switch (``opcodes_on_values``) was left out of the flags, so following the line gave another refusal.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.cli import main

MOSAIC = ("fit", "--config", "fixtures/mosaic_tiny.yaml", "--data.n_train", "60")


def test_the_named_flags_resume_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = ("--trainer.default_root_dir", str(tmp_path))
    assert main([*MOSAIC, *root, "--trainer.max_steps", "2"]) == 0
    resume = (*MOSAIC, *root, "--trainer.max_steps", "4", "--ckpt_path", "last")
    capsys.readouterr()
    assert main([*resume, "--data.opcodes_on_values", "true", "--data.n_val", "30"]) == 3
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion:")]
    flags = line.split("give the settings it was trained with (", 1)[1].split(")", 1)[0]
    assert flags == "--data.n_val 40 --data.opcodes_on_values false", line
    assert main([*resume, "--data.opcodes_on_values", "true", "--data.n_val", "30", *flags.split()]) == 0
