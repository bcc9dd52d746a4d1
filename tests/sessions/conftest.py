"""Fixtures of the session tests: an artifacts root with a base and a session that has run once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.sessions.helpers import SMALL_BASE, session


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trained") / "artifacts"
    assert session("init-base", "--artifacts_root", str(root), *SMALL_BASE) == 0
    assert session("new", "--artifacts_root", str(root), "--session_id", "s1") == 0
    assert session("run", "--artifacts_root", str(root), "--session_id", "s1", "--steps", "96") == 0
    return root


@pytest.fixture
def trained(trained_once: Path, tmp_path: Path) -> Path:
    """A fresh copy of an artifacts root with a base and session s1 after one run of 96 steps."""
    root = tmp_path / "artifacts"
    shutil.copytree(trained_once, root)
    return root
