"""The base model every window test plans from: one small DecoderLM run, trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.core.run import read_latest
from tests.helpers import fit


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "30") == 0
    return root / read_latest(root)
