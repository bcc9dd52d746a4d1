"""What the session tests share: the command, a subprocess of it, the small base's settings."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from lit_psion.cli import main
from tests.helpers import REPO_ROOT

SMALL_BASE = ["--pretrain_steps", "150", "--pretrain_batch", "16", "--pretrain_seq", "16"]


def session(*args: str) -> int:
    return main(["session", *args])


def session_process(*args: str, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lit_psion", "session", *args], stdout=stdout, stderr=stderr,
                            text=True, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
