"""A run whose directory this user may not write is refused before anything of it changes: the lock file (made by
the run's first fit) still opens, so a resume used to append its ``resumed`` and ``failed`` receipts and only then
fail at run.json's temporary file, leaving a chain that no verifier or resume accepts again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lit_psion.core import RunLayout
from lit_psion.core.run import read_latest
from tests.helpers import REPO_ROOT, TINY, callbacks_config, fit, subprocess_env

ROOT_WITHOUT_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                         "--inh-caps=-dac_override,-dac_read_search"]  # fmt: skip
"""As root, file modes bind only without the capabilities that override them."""


def _as_a_user(command: list[str]) -> subprocess.CompletedProcess:
    prefix = ROOT_WITHOUT_OVERRIDE if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("root writes through a read-only mode, and setpriv is not here to drop that")
    return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env=subprocess_env(OMP_NUM_THREADS="1"))  # fmt: skip


@pytest.mark.parametrize("status", ["completed", pytest.param("paused", marks=pytest.mark.slow)])
def test_a_resume_of_a_run_no_one_can_write_into_is_refused_before_any_record_changes(tmp_path: Path,
                                                                                    status: str) -> None:  # fmt: skip
    args = ["--trainer.default_root_dir", str(tmp_path), "--checkpoint.every_n_train_steps", "2"]
    if status == "completed":
        assert fit(*args, "--trainer.max_steps", "4") == 0
    else:  # a Ctrl-C at step 3, in a process group of its own
        ctrl_c = ["--config", callbacks_config(tmp_path / "c.json", ("InterruptAt", {"step": 3}))]
        first = subprocess.run([sys.executable, "-m", "lit_psion", "fit", "--config", TINY, *args, *ctrl_c,
                                "--trainer.max_steps", "4"], capture_output=True, text=True, timeout=300,
                               cwd=REPO_ROOT, env=subprocess_env(OMP_NUM_THREADS="1"),
                               start_new_session=True)  # fmt: skip
        assert first.returncode == 130, first.stderr
    layout = RunLayout(tmp_path, read_latest(tmp_path))
    assert f'"status": "{status}"' in layout.run_file.read_text()
    before = {path.name: path.read_bytes() for path in layout.run_dir.iterdir() if path.is_file()}
    layout.run_dir.chmod(0o555)
    try:
        probe = _as_a_user(["touch", str(layout.run_dir / "probe")])
        if probe.returncode == 0:
            pytest.skip("this user writes through a read-only mode")
        done = _as_a_user([sys.executable, "-m", "lit_psion", "fit", "--config", TINY, *args, "--trainer.max_steps",
                           "8", "--ckpt_path", "last"])  # fmt: skip
    finally:
        layout.run_dir.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"lit_psion: error: {str(layout.run_dir)!r} cannot be written (Permission denied); make it writable, or give "
        "the command a directory you can write (--out; for a run, copy it somewhere writable and give "
        "--trainer.default_root_dir there)")  # fmt: skip
    after = {path.name: path.read_bytes() for path in layout.run_dir.iterdir() if path.is_file()}
    assert after == before
    assert fit(*args, "--trainer.max_steps", "8", "--ckpt_path", "last") == 0
    assert '"global_step": 8' in layout.run_file.read_text()
