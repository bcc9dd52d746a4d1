"""What a resume killed at its start leaves is what the resume itself accepts, so the verifiers accept it too.

An attempt killed after writing checkpoint 8 (renamed in, not yet pointed to or receipted), after a validation at
step 6, leaves the pointer at step 4. A resume from there killed right after its ``resumed`` receipt left
metrics.csv's step-6 row (dropped by the resume only next) and step-000008 (written again only at step 8): doctor
called the first "edited" (exit 5) and the second "the run's fit did not write it" (exit 4). A resume with a changed
setting killed between run.json and config.yaml left the previous attempt's config.yaml: doctor said it "differs
from run.json's" (exit 3), though the next resume accepts it. Each resume then completes, bitwise as uninterrupted.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_psion.cli import main
from lit_psion.core import atomic_write_json, read_json
from lit_psion.core.run import read_latest
from tests.helpers import callbacks_config, fit_subprocess, latest_checkpoint

SHAPE = ["--trainer.max_steps", "12", "--checkpoint.every_n_train_steps", "4", "--trainer.val_check_interval", "6"]


class KillAfterResumedReceipt(Callback):
    """SIGKILL this process right after the resume's ``training_run`` receipt, before anything else it writes."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lit_psion.callbacks import Receipts

        for callback in trainer.callbacks:
            if isinstance(callback, Receipts):
                original = callback._emit_own

                def emit_then_die(trainer: L.Trainer, body: Any, original: Any = original) -> None:
                    original(trainer, body)
                    if getattr(body, "event", None) == "resumed":
                        os.kill(os.getpid(), signal.SIGKILL)

                callback._emit_own = emit_then_die


class KillAtConfigRewrite(Callback):
    """SIGKILL this process as a resume rewrites config.yaml (after run.json records the new config's digest)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lit_psion.callbacks import run_dir

        original = run_dir.atomic_write_text

        def die_at_config(path: Any, text: str) -> Any:
            if Path(path).name == "config.yaml" and Path(path).exists():
                os.kill(os.getpid(), signal.SIGKILL)
            return original(path, text)

        run_dir.atomic_write_text = die_at_config


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("killed")
    overlay = callbacks_config(root / "kill.json", ("KillAfterPointer", {"step": 8, "before": True}))
    done = fit_subprocess(*SHAPE, "--trainer.default_root_dir", str(root / "runs"), "--config", overlay)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    run = root / "runs" / read_latest(root / "runs")
    assert (run / "checkpoints" / "step-000008").is_dir() and "val/loss" in (run / "metrics.csv").read_text()
    assert main(["doctor", str(run)]) == 0
    return root


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("whole")
    assert main(["fit", "--config", "fixtures/tiny.yaml", *SHAPE, "--trainer.default_root_dir", str(root)]) == 0
    return latest_checkpoint(root)["state_dict"]


@pytest.mark.parametrize(("kill", "flags"), [
    ("KillAfterResumedReceipt", []),
    ("KillAtConfigRewrite", ["--trainer.log_every_n_steps", "2"]),  # another config.yaml: written after run.json
])  # fmt: skip
def test_doctor_accepts_what_a_resume_killed_at_its_start_leaves(
    killed: Path, uninterrupted: dict[str, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture, kill: str,
    flags: list[str]
) -> None:
    root = Path(shutil.copytree(killed, tmp_path / "copy"))
    runs = ["--trainer.default_root_dir", str(root / "runs")]
    overlay = callbacks_config(tmp_path / "kill.json", (f"{__name__}.{kill}", {}))
    done = fit_subprocess(*SHAPE, *runs, "--ckpt_path", "last", "--config", overlay, *flags)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    run = root / "runs" / read_latest(root / "runs")
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 0, capsys.readouterr().out
    said = capsys.readouterr().out
    if kill == "KillAfterResumedReceipt":
        assert "ok   checkpoints/step-000008" in said and "not vouched for" in said, said
    assert main(["fit", "--config", "fixtures/tiny.yaml", *SHAPE, *runs, "--ckpt_path", "last", *flags]) == 0
    assert main(["doctor", str(run)]) == 0
    finished = latest_checkpoint(root / "runs")["state_dict"]
    assert all(torch.equal(finished[name], value) for name, value in uninterrupted.items())


def test_a_checkpoint_planted_under_a_later_step_is_still_a_forgery(killed: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """After the killed resume, a copy of the killed attempt's checkpoint renamed to step 40 (its manifest rewritten,
    every digest matching) passed as the kill's leftover: the head's later checks were skipped."""
    root = Path(shutil.copytree(killed, tmp_path / "copy"))
    overlay = callbacks_config(tmp_path / "kill.json", (f"{__name__}.KillAfterResumedReceipt", {}))
    done = fit_subprocess(*SHAPE, "--trainer.default_root_dir", str(root / "runs"), "--ckpt_path", "last",
                          "--config", overlay)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    run = root / "runs" / read_latest(root / "runs")
    planted = Path(shutil.copytree(run / "checkpoints" / "step-000008", run / "checkpoints" / "step-000040"))
    manifest = read_json(planted / "manifest.json") | {"step": 40}
    atomic_write_json(planted / "manifest.json", manifest)
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 4
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "step-000040" in line]
    assert line.startswith("FAIL") and "did not write it" in line, line
