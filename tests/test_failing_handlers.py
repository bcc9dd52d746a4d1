"""A user's callback whose ``on_exception`` itself fails: the fit still ends the way it would have, recorded.

Lightning calls the callbacks' ``on_exception`` hooks in turn and stops at the first that raises; a user's
callbacks come before lit_psion's, so one failing there used to leave run.json ``active``, the held step receipts
unwritten, a SIGTERM's pause uncheckpointed, and the fit's own failure unreported behind the hook's.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest

from lit_psion.cli import main
from lit_psion.core import RunLayout, read_json
from lit_psion.core.chain import verify_log
from lit_psion.core.digest import canonical_json
from lit_psion.core.run import read_latest


class StopsAtStepThree(L.Callback):
    """Ends the fit during step 3 (its own error, lit_psion's, Ctrl-C or SIGTERM); its ``on_exception`` fails as
    ``handler`` says (``raise``, ``sys.exit``, or ``none``: it records that it ran)."""

    def __init__(self, stop: str, handler: str) -> None:
        self.stop, self.handler, self.handled = stop, handler, False

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == 2 and self.stop == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # (Lightning stops after the step: step 3)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step != 3:
            return
        if self.stop == "its own error":
            raise KeyError("the callback's own table has no 'step'")
        if self.stop == "ctrl-c":
            raise KeyboardInterrupt
        if self.stop == "lit_psion's error":
            canonical_json({"loss": float("nan")})  # lit_psion raises: a ValueError of its own (exit 1)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.handled = True
        if self.handler == "raise":
            raise RuntimeError("the handler's own\nupload failed")
        if self.handler == "sys.exit":
            sys.exit(0)


ENDINGS = [  # how the fit stops: exit code, run.json's status and failure_class
    ("its own error", 14, "failed", "user_code_failed"),
    ("lit_psion's error", 1, "failed", "internal"),
    ("ctrl-c", 130, "paused", None),
    ("sigterm", 143, "paused", None),
]


@pytest.mark.parametrize("handler", ["raise", "sys.exit", "none"])
@pytest.mark.parametrize(("stop", "code", "status", "failure"), ENDINGS, ids=[e[0] for e in ENDINGS])
def test_a_failing_on_exception_of_the_users_does_not_stop_the_run_being_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture, stop: str, code: int, status: str, failure: str | None,
    handler: str,
) -> None:  # fmt: skip
    args = ["fit", "--config", "fixtures/tiny.yaml", f"--trainer.callbacks+={__name__}.StopsAtStepThree",
            f"--trainer.callbacks.stop={stop}", f"--trainer.callbacks.handler={handler}",
            "--checkpoint.every_n_train_steps", "2", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == code
    err = capsys.readouterr().err
    run = tmp_path / read_latest(tmp_path)
    record = read_json(run / "run.json")
    assert (record["status"], record["failure_class"]) == (status, failure), (record, err)
    assert record["global_step"] == 3, record
    # every step's receipt was written, then the ending's, and the chain verifies up to run.json's head
    result = verify_log(run / "receipts.jsonl", run_id=run.name)
    assert result.ok and result.head == record["receipts_head"], result.describe()
    kinds = [json.loads(line)["kind"] for line in (run / "receipts.jsonl").read_text().splitlines()]
    assert kinds.count("trainer_step") == 3 - (stop != "sigterm"), kinds  # (a step that raised has no receipt)
    if stop == "sigterm":  # the pause's checkpoint, written by lit_psion's own on_exception
        assert read_json(RunLayout.of(run).pointer)["step"] == 3
    warning = [line for line in err.splitlines() if ".on_exception raised" in line]
    if handler == "none":
        assert not warning, err
        return
    error = "RuntimeError: the handler's own upload failed" if handler == "raise" else "SystemExit: 0"
    stopped_on = {"its own error": "KeyError", "lit_psion's error": "ValueError", "ctrl-c": "KeyboardInterrupt",
                  "sigterm": "SIGTERMException"}[stop]  # fmt: skip
    assert len(warning) == 1, err
    assert warning[0].startswith(f"lit_psion: warning: StopsAtStepThree.on_exception raised {error} (raised at "
                                 f"{__file__}:"), warning  # fmt: skip
    assert warning[0].endswith(f", in on_exception) while the fit stopped on {stopped_on}; the run's record was "
                               "written regardless; fix it"), warning  # fmt: skip
    if code == 14:  # the fit's own error is the one said, not the handler's
        assert "your code raised KeyError" in err and "in on_train_batch_end" in err, err



class FailsAtTeardown(L.Callback):
    """Raises in ``teardown``, after the fit has completed and sealed its chain."""

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        raise RuntimeError("teardown went wrong")


def test_a_callback_failing_after_the_run_completed_says_the_run_completed(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """It said "fix it; continue run R from its latest durable checkpoint with ... --ckpt_path last" of a run whose
    run.json said completed and whose chain was sealed: there was nothing to continue."""
    from tests.helpers import TINY

    capsys.readouterr()
    assert main(["fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3",
                 "--trainer.callbacks+=tests.test_failing_handlers.FailsAtTeardown"]) == 14  # fmt: skip
    layout = RunLayout(tmp_path, read_latest(tmp_path))
    assert read_json(layout.run_file)["status"] == "completed"
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "your code raised RuntimeError: teardown went wrong" in line, line
    assert f"run {layout.run_id} had completed at step 3 before it" in line and "--ckpt_path last" not in line, line
