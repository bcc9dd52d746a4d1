"""Fixtures of the checkpoint-custody tests: a run killed mid-fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.core.run import read_latest
from tests.helpers import callbacks_config, fit_subprocess


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run killed in step 9 (its receipts reach step 8: each written as its step ends) whose checkpoints (every 3
    steps) up to 6 are receipted."""
    root = tmp_path_factory.mktemp("killed")
    kill = callbacks_config(root / "kill.json", ("KillAt", {"step": 9}))
    assert fit_subprocess("--trainer.default_root_dir", str(root), "--trainer.max_steps", "12",
                          "--receipts.flush_every_n_steps", "1", "--config", kill).returncode == -9  # fmt: skip
    return root / read_latest(root)
