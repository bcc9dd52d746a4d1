"""A process that ran lit_psion's strategies destroys its gloo process group at exit, before the interpreter's
teardown (Lightning does so for NCCL only). Left to the teardown, a rank that had finished its work dies now and
then with ``terminate called without an active exception`` (SIGABRT), and torchrun reports the fit as failed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Registered before lit_psion.strategies is imported, so it runs after that package's exit handler (LIFO).
RANK = textwrap.dedent("""
    import atexit, sys
    import torch
    import torch.distributed as dist
    atexit.register(lambda: print(f"left to teardown: {dist.is_initialized()}", flush=True))
    import lit_psion.strategies  # noqa: F401
    dist.init_process_group("gloo")
    gathered = [torch.empty(1000) for _ in range(dist.get_world_size())]
    for _ in range(5):
        dist.all_gather(gathered, torch.full((1000,), float(dist.get_rank())))
""")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def test_the_group_is_destroyed_before_the_interpreter_tears_down(tmp_path: Path) -> None:
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    env = _env() | {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "left to teardown: False"


@pytest.mark.slow
def test_four_gloo_ranks_that_finish_all_exit_0(tmp_path: Path) -> None:
    """Without the exit handler, 10 of 15 such launches here had a rank killed by SIGABRT."""
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    for _ in range(5):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", str(script)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=_env())
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.count("left to teardown: False") == 4
