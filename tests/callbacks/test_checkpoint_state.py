"""A checkpoint whose trainer state a resume could not load is refused when it is written, naming the part.

A callback's ``state_dict`` holding a ``datetime`` made every checkpoint from then on unloadable (a resume loads
with ``weights_only=True``) while ``ckpt verify`` and ``doctor`` said ok; one holding a local function failed the
write with exit 1 and left a staged directory behind.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import threading
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.errors import ConfigError
from lit_psion.core.run import read_latest
from lit_psion.resumable import refuse_unloadable_state
from tests.test_bad_input import one_error_line


@dataclasses.dataclass
class Settings:
    """A user's own class, not registered with torch.serialization.add_safe_globals."""

    rate: float = 0.5


def _local() -> Any:
    def inner() -> None:
        pass

    return inner


BAD = {
    "a datetime": (datetime.datetime(2026, 12, 6), "datetime.datetime"),
    "a dataclass": (Settings(), "Settings"),
    "a local function": (_local(), "cannot be saved"),
    "a lock": (threading.Lock(), "cannot be saved"),
    "a lambda in a list": ([1, lambda: 0], "cannot be saved"),
    "a set of objects": ({datetime.date(2026, 1, 1)}, "datetime.date"),
}
GOOD = {
    "plain data": {"n": 3, "rate": 0.5, "name": "x", "none": None, "flags": [True, False], "pair": (1, 2)},
    "nested dicts with int keys": {1: {"a": [1.5, {"b": "c"}]}},
    "tensors anywhere": {"t": torch.ones(3), "deep": [{"u": torch.zeros(2, dtype=torch.int64)}]},
    "an OrderedDict of tensors": collections.OrderedDict(w=torch.ones(2)),
    "a dtype, a device and a size": {"dtype": torch.float32, "device": torch.device("cpu"), "size": torch.Size([2])},
}


def _checkpoint(**callbacks: Any) -> dict[str, Any]:
    optimizer = {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]}
    return {"global_step": 4, "epoch": 0, "state_dict": {"w": torch.ones(2)}, "callbacks": callbacks,
            "optimizer_states": [optimizer]}  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_a_state_a_resume_could_not_load_is_refused_naming_its_callback(case: str) -> None:
    value, named = BAD[case]
    with pytest.raises(ConfigError) as refused:
        refuse_unloadable_state(_checkpoint(Fine={"n": 1}, Holder={"kept": value}))
    message = str(refused.value)
    assert message.startswith("the checkpoint of step 4 cannot hold callback 'Holder''s state: "), message
    assert named in message and "weights_only" in message


@pytest.mark.parametrize("case", GOOD)
def test_tensors_and_plain_data_pass(case: str) -> None:
    refuse_unloadable_state(_checkpoint(Holder=GOOD[case]))


def test_a_module_part_is_named_by_its_key_and_a_registered_class_passes() -> None:
    with pytest.raises(ConfigError, match=r"cannot hold its 'written_at': .*datetime\.datetime"):
        refuse_unloadable_state({**_checkpoint(), "written_at": datetime.datetime(2026, 12, 6)})
    with torch.serialization.safe_globals([Settings]):  # the user said it is safe: a resume loads it too
        refuse_unloadable_state(_checkpoint(Holder={"settings": Settings()}))


class StateFromStep(L.Callback):
    """A user's callback whose state holds an object from step ``step`` on (plain data before)."""

    def __init__(self, step: int = 4, kind: str = "datetime") -> None:
        self.step, self.kind, self.at = step, kind, 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.at = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        if self.at < self.step:
            return {"at": self.at}
        return {"at": datetime.datetime(2026, 12, 6) if self.kind == "datetime" else _local()}


@pytest.mark.parametrize("kind", ["datetime", "local function"])
def test_the_fit_stops_at_that_checkpoint_with_the_earlier_ones_whole(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                      kind: str) -> None:  # fmt: skip
    """Refused as a setting (exit 2) at the checkpoint of step 6 (checkpoints every 3 steps), nothing of it staged
    or written, the run failed as config_invalid; the checkpoint of step 3 stays the one a resume continues from,
    and it does once the callback is gone."""
    root = tmp_path / "runs"
    args = ["fit", "--config", "fixtures/tiny.yaml", "--trainer.default_root_dir", str(root),
            f"--trainer.callbacks+={__name__}.StateFromStep", "--trainer.callbacks.step=5",
            f"--trainer.callbacks.kind={kind}"]  # fmt: skip
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "the checkpoint of step 6 cannot hold callback 'StateFromStep''s state" in line, line
    run = root / read_latest(root)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["pointer.json", "step-000003"]
    record = read_json(run / "run.json")
    assert (record["status"], record["failure_class"]) == ("failed", "config_invalid"), record
    assert main(["ckpt", "verify", str(run)]) == 0
    resume = ["fit", "--config", "fixtures/tiny.yaml", "--trainer.default_root_dir", str(root), "--ckpt_path", "last"]
    assert main(resume) == 0
    assert read_json(run / "run.json")["status"] == "completed"


class SavesItself(L.Callback):
    """A user's callback that writes a checkpoint of its own with trainer.save_checkpoint at step 3."""

    def __init__(self, path: str = "") -> None:
        self.path = path

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == 3:
            trainer.save_checkpoint(self.path or Path(trainer.default_root_dir) / read_latest(trainer.default_root_dir)
                                    / "checkpoints" / "step-000003")  # fmt: skip


@pytest.mark.parametrize("where", ["in the run", "elsewhere"])
def test_a_checkpoint_saved_by_a_callback_during_the_fit_is_refused_unwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    """It was written (into the run: a step directory no receipt records, which doctor then failed, exit 4)."""
    root, elsewhere = tmp_path / "runs", tmp_path / "mine.ckpt"
    args = ["fit", "--config", "fixtures/tiny.yaml", "--trainer.default_root_dir", str(root),
            "--checkpoint.every_n_train_steps", "2", f"--trainer.callbacks+={__name__}.SavesItself",
            f"--trainer.callbacks.path={elsewhere if where == 'elsewhere' else ''}"]  # fmt: skip
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "trainer.save_checkpoint was called during the fit by something other than lit_psion's" in line, line
    run = root / read_latest(root)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["pointer.json", "step-000002"]
    assert not elsewhere.exists()
    assert read_json(run / "run.json")["failure_class"] == "config_invalid"
