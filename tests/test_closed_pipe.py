"""A command whose reader has left (``| head``, ``| true``) ends with its own exit code, without a traceback: it
was exit 1 (lit_psion's code for its own bugs), with a BrokenPipeError traceback for ``--help``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_psion.core.run import read_latest
from tests.helpers import REPO_ROOT, fit, subprocess_env


def _into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m lit_psion ARGS`` with its stdout a pipe no one reads: every write fails (EPIPE)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "lit_psion", *args], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120, env=subprocess_env(PYTHONPATH=str(REPO_ROOT)), cwd=REPO_ROOT)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [("--help",), ("receipts", "--help"), ("fit", "--help")], ids=lambda a: a[0])
def test_help_into_a_closed_pipe_exits_0_quietly(args: tuple[str, ...]) -> None:
    result = _into_a_closed_pipe(*args)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_compare_into_a_closed_pipe_writes_its_page_and_exits_0(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "2") == 0
    out = tmp_path / "compare"
    result = _into_a_closed_pipe("compare", str(root / read_latest(root)), "--out", str(out))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert (out / "index.html").is_file()

