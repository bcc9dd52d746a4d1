"""How a multi-process fit that Lightning's own launcher started ends: with rank 0's exit code and records.

Rank 0's launcher SIGKILLs every process, rank 0 too, once it sees a child exit non-zero or by a signal
(it polls every 5 s). Each test gives rank 0 a slow exit (6 s in its exception hooks, 6 s more at interpreter
exit), so a child that left first, or one the launcher killed and nobody reaped, would have rank 0 killed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.core import read_json
from tests.strategies.test_sharded import DDP, N, run_dir, run_fit

SLOW_EXIT = ("SlowExitOnRankZero", {"seconds": 6})


@pytest.mark.slow  # default-suite budget: a world-2 fit with two 6 s exits
def test_ctrl_c_in_a_two_process_fit_exits_130_with_the_run_paused(tmp_path: Path) -> None:
    """Ctrl-C reaches every rank; Lightning's graceful shutdown would exit 1, and its observer would kill rank 0
    after it killed the other rank."""
    result = run_fit(tmp_path, "--trainer.max_steps", str(N), strategy=DDP,
                     callbacks=(("InterruptAt", {"step": 5}), SLOW_EXIT))  # fmt: skip
    assert result.returncode == 130, result.stderr[-3000:]
    assert "lit_psion: interrupted" in result.stderr
    record = read_json(run_dir(tmp_path) / "run.json")
    assert record["status"] == "paused" and record["global_step"] == 4
