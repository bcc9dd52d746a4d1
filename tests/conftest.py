"""Shared test set-up: run from the repository root, a per-session data cache, offline W&B."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LIT_PSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture(autouse=True)
def _same_random_start() -> None:
    """torch seeds each process at random: every test starts from the same generator state, whichever process
    (an xdist worker) or order runs it, so a test's outcome cannot depend on its draw."""
    random.seed(0)
    if (torch := sys.modules.get("torch")) is not None:
        torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _restore_environment_per_module() -> Iterator[None]:
    """The same for what a module-scoped fixture's in-process fit left (it runs before a test's own snapshot)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """Undo what a test's in-process fit left in os.environ (Lightning's launcher sets LOCAL_RANK, NODE_RANK,
    MASTER_ADDR, ...): a later subprocess fit that inherits LOCAL_RANK believes its ranks were started for it,
    starts none, and waits for them forever."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
