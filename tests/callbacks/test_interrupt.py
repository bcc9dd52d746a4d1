"""Ctrl-C stops a fit wherever it lands: at the next step boundary, exit 130, the run ``paused``.

Python's own SIGINT handler raises ``KeyboardInterrupt`` where the main thread happens to be; inside a weakref
callback or a ``__del__`` Python prints "Exception ignored" and carries on, and the fit trained to its end and
exited 0. Each case below is how a Ctrl-C reaches the process: delivered by the kernel, landing inside a
finalizer, pressed twice, or sent to a process that was started ignoring SIGINT (a background job).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest

from lit_psion.core import read_json
from lit_psion.core.run import read_latest
from tests.helpers import fit


class _Finalized:
    """Its ``__del__`` runs the SIGINT handler, as a Ctrl-C landing while Python finalizes an object does."""

    def __del__(self) -> None:
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)


class CtrlCAtStepThree(L.Callback):
    """Ctrl-C during step 3: ``how`` it arrives."""

    def __init__(self, how: str) -> None:
        self.how = how

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step != 3:
            return
        if self.how == "in a finalizer":
            _Finalized()  # collected at once: the handler runs inside its __del__
        elif self.how == "twice":
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
        else:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("how", ["delivered", "in a finalizer", "twice"])
def test_ctrl_c_pauses_the_fit_at_that_step_wherever_it_lands(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              how: str) -> None:  # fmt: skip
    added = (f"--trainer.callbacks+={__name__}.CtrlCAtStepThree", f"--trainer.callbacks.how={how}")
    assert fit(*added, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "8") == 130
    record = read_json(tmp_path / read_latest(tmp_path) / "run.json")
    assert (record["status"], record["global_step"]) == ("paused", 3), record
    err = capsys.readouterr().err
    assert "lit_psion: interrupted" in err and "Exception ignored" not in err, err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back after the fit


class FailsAtStepTwo(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == 2:
            raise KeyError("step")


def test_a_fit_that_failed_gives_python_its_handler_back(tmp_path: Path) -> None:
    """A failed fit runs no teardown hook: its handler stayed, and the next fit in the process (a notebook, a
    script calling main twice) started without Python's and never noted a Ctrl-C."""
    assert fit(f"--trainer.callbacks+={__name__}.FailsAtStepTwo", "--trainer.default_root_dir", str(tmp_path),
               "--trainer.max_steps", "4") == 14  # fmt: skip
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_fit_started_ignoring_sigint_keeps_ignoring_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A background job started from a shell without job control ignores SIGINT: its fit does too."""
    added = (f"--trainer.callbacks+={__name__}.CtrlCAtStepThree", "--trainer.callbacks.how=delivered")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert fit(*added, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "5") == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert read_json(tmp_path / read_latest(tmp_path) / "run.json")["status"] == "completed"


class TermsAsItIsMade(L.Callback):
    """SIGTERM while the fit is being set up (this callback is made before any run exists), as a scheduler's."""

    def __init__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_before_training_is_said_and_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before Lightning's handler, Python's default killed the fit in silence (exit 143, no line), leaving the runs
    root it had just made."""
    root = tmp_path / "new" / "root"
    assert fit(f"--trainer.callbacks+={__name__}.TermsAsItIsMade", "--trainer.default_root_dir", str(root)) == 143
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == "lit_psion: stopped by SIGTERM before a run started; nothing was written", line
    assert not (tmp_path / "new").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # given back for the next command
