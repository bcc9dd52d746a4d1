"""Transaction cases beyond the basic commit and rollback: running statistics, a loss below zero, a restore's
learning rate and the checkpoints it is held to, accumulation windows, skipped batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_psion.callbacks import PointerCheckpoint, Receipts
from lit_psion.checkpoint_io import ManifestCheckpointIO
from lit_psion.core import read_json
from lit_psion.core.errors import CheckpointError
from lit_psion.strategies import TransactionalStrategy, TransactionPolicy
from tests.helpers import assert_tree_equal
from tests.strategies.regression import Regression
from tests.strategies.test_transactional import RESTORING, TOLERANT, train, transactions


class _ReplaceCheckpointBefore(L.Callback):
    """Before batch ``at``, replace step 4's weights with step 2's under a manifest and pointer rewritten to match:
    every digest agrees except the one the checkpoint's durable receipt recorded."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, idx: int) -> None:
        if idx != self.at:
            return
        from lit_psion.core import atomic_write_json, sha256_file

        checkpoints = Path(trainer.default_root_dir) / "checkpoints"
        target = checkpoints / "step-000004"
        manifest = read_json(target / "manifest.json")
        for name in manifest["files"]:
            if name.endswith(".safetensors"):
                (target / name).write_bytes((checkpoints / "step-000002" / name).read_bytes())
                manifest["files"][name] = {**manifest["files"][name], "sha256": sha256_file(target / name)}
        atomic_write_json(target / "manifest.json", manifest)
        pointer = read_json(checkpoints / "pointer.json")
        atomic_write_json(checkpoints / "pointer.json", {**pointer, "manifest_sha256": sha256_file(
            target / "manifest.json")})  # fmt: skip


def test_a_restore_mid_run_is_held_to_the_checkpoints_receipts_as_a_resume_is(tmp_path: Path) -> None:
    """The restore after repeated rollbacks checked only the pointer's digest, so a checkpoint replaced under a
    rewritten manifest and pointer, which `ckpt verify` and a resume refuse, was loaded mid-run. Refused, it falls
    back to the newest checkpoint that verifies."""
    strategy = TransactionalStrategy(RESTORING)
    checkpoints = PointerCheckpoint(every_n_train_steps=2, keep_last_k=10)
    train(tmp_path, Regression(poison={3: "nan", 4: "nan"}), strategy, 8, checkpoints, _ReplaceCheckpointBefore(4))
    assert [r["action"] for r in transactions(tmp_path)[3:5]] == [None, "restored:step-000002"]


class _Normalised(Regression):
    """The regression behind a BatchNorm, whose running statistics a forward in training mode updates."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.norm = torch.nn.BatchNorm1d(8)

    def loss(self, batch: object) -> torch.Tensor:
        index, x, y = batch  # type: ignore[misc]
        if self.poison.get(int(index[0]) // self.batch_size) == "nan":
            x = x.clone()
            x[0, 0] = float("nan")
        return torch.nn.functional.mse_loss(self.layer(self.norm(x)), y)


def test_a_rollback_puts_running_statistics_back_and_measuring_does_not_move_them(tmp_path: Path) -> None:
    """The snapshot held trainable parameters only: a NaN batch's rollback left running_mean NaN, and the loss
    measurements' forwards updated the statistics again (num_batches_tracked 8 against 4 for the plain strategy)."""
    plain = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path / "plain"))  # fmt: skip
    reference = _Normalised()
    plain.fit(reference)
    for name in ("tx", "nan"):
        (tmp_path / name).mkdir()
    committed = _Normalised()
    train(tmp_path / "tx", committed, TransactionalStrategy(TOLERANT), 4)
    assert_tree_equal(committed.state_dict(), reference.state_dict(), "all-commit run against the plain strategy")
    poisoned = _Normalised(poison={2: "nan"})
    recorder = train(tmp_path / "nan", poisoned, TransactionalStrategy(TOLERANT), 4)
    assert [r["decision"] for r in transactions(tmp_path / "nan")] == ["commit", "commit", "rollback", "commit"]
    assert_tree_equal(recorder.after[2]["params"], recorder.before[2]["params"], "rolled-back step")
    assert torch.isfinite(poisoned.norm.running_mean).all()


class _Negative(Regression):
    def loss(self, batch: object) -> torch.Tensor:
        return super().loss(batch) - 10.0  # a loss below zero (a log-likelihood bound, an energy)


def test_a_loss_below_zero_that_falls_commits(tmp_path: Path) -> None:
    """post > pre * (1 + tol) read every improvement of a negative loss (-3.75 to -4.46) as a regression: every step
    rolled back and the run stopped as diverging."""
    strategy = TransactionalStrategy(TransactionPolicy(rollback_tol=0.2))
    train(tmp_path, _Negative(), strategy, 6)
    assert (strategy.commits, strategy.rolled_back) == (6, 0)


class _Decaying(Regression):
    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.ExponentialLR(
            optimizer, gamma=0.5), "interval": "step"}}  # fmt: skip


def test_a_restore_keeps_the_schedules_learning_rate(tmp_path: Path) -> None:
    """The checkpoint's optimizer state carried its step's learning rate: after a restore at step 5 an exponential
    schedule's rate stayed 4x too high for the rest of the run."""
    checkpoints = PointerCheckpoint(every_n_train_steps=2, keep_last_k=10)
    module = _Decaying(poison={3: "nan", 4: "nan"})
    train(tmp_path, module, TransactionalStrategy(RESTORING), 8, checkpoints)
    assert any((r["action"] or "").startswith("restored:") for r in transactions(tmp_path))
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(module.lr * 0.5**8)


def test_a_restore_whose_durable_checkpoints_are_all_damaged_stops_as_a_checkpoint_error(tmp_path: Path) -> None:
    """The restore read "no checkpoint yet" and went on as skip_listed_no_checkpoint, though the receipts record
    durable checkpoints: damage was taken for their absence."""
    class _DeleteCheckpoints(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
            if trainer.global_step == 4:
                for step in (tmp_path / "checkpoints").glob("step-*"):
                    shutil.rmtree(step)

    checkpoints = PointerCheckpoint(every_n_train_steps=2, keep_last_k=10)
    with pytest.raises(CheckpointError, match="rollbacks in a row call for the last durable checkpoint, but none"):
        train(tmp_path, Regression(poison={4: "nan", 5: "nan"}), TransactionalStrategy(RESTORING), 8, checkpoints,
              _DeleteCheckpoints())  # fmt: skip



def test_a_nan_in_an_accumulation_windows_first_micro_batch_rolls_the_step_back(tmp_path: Path) -> None:
    """The step receipt's loss check ran on every micro-batch, before the window's optimizer step, and stopped the
    transactional run ("use --trainer.strategy transactional") instead of letting the transaction roll it back."""
    strategy = TransactionalStrategy(TOLERANT)
    trainer = L.Trainer(strategy=strategy, max_steps=4, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), plugins=[ManifestCheckpointIO()],
                        callbacks=[Receipts()])  # fmt: skip
    trainer.fit(Regression(poison={2: "nan"}))  # batch 2 opens step 2's window
    assert [r["decision"] for r in transactions(tmp_path)] == ["commit", "rollback", "commit", "commit"]
    steps = [json.loads(line)["body"] for line in (tmp_path / "receipts.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "trainer_step"]  # fmt: skip
    assert [(r["step_in"], r["step_out"]) for r in steps] == [(0, 1), (2, 3), (3, 4)]  # once per committed step


class _SkipsBatches(Regression):
    def training_step(self, batch: object, batch_idx: int) -> torch.Tensor | None:
        return None if batch_idx in (1, 2, 3) else super().training_step(batch, batch_idx)  # Lightning's skip


def test_a_training_step_that_returns_none_is_a_skipped_batch_not_a_divergence(tmp_path: Path) -> None:
    """It was receipted nonfinite_loss and counted towards the streak: three skips in a row stopped the run as
    "diverging" (exit 7)."""
    strategy = TransactionalStrategy(TransactionPolicy(restore_after=2, stop_after=3))
    train(tmp_path, _SkipsBatches(), strategy, 6)
    assert [r["decision"] for r in transactions(tmp_path)] == ["commit"] * 3 and strategy.rolled_back == 0


def _drop_all(batches: list[dict]) -> list[dict]:
    return []


def _drop_the_last(batches: list[dict]) -> list[dict]:
    return batches[:-1]


@pytest.mark.parametrize("edit", [None, _drop_all, _drop_the_last], ids=["deleted", "emptied", "last entry dropped"])
def test_a_skip_list_that_lost_a_stopped_streaks_batches_is_refused(tmp_path: Path, edit: object) -> None:
    """A stop lists its streak so that every later resume skips those batches, but only a restore's streak was
    required on the list: deleting the file or an entry passed `doctor` and the resume trained (and stopped on)
    the same batches again."""
    from lit_psion.core.audit import check_skip_list
    from lit_psion.core.errors import EvidenceError, TransactionError
    from lit_psion.core.layout import RunLayout

    stopping = TransactionPolicy(rollback_tol=1.0, restore_after=4, stop_after=4)  # no restore lists a streak first
    poisoned = dict.fromkeys(range(2, 8), "nan")
    with pytest.raises(TransactionError, match="4 consecutive steps rolled back"):
        train(tmp_path, Regression(poison=poisoned), TransactionalStrategy(stopping), 12)
    listed = tmp_path / "skip_list.json"
    check_skip_list(RunLayout.of(tmp_path))  # the honest list passes
    if edit is None:
        listed.unlink()
    else:
        record = read_json(listed)
        listed.write_text(json.dumps({**record, "batches": edit(record["batches"])}))
    with pytest.raises(EvidenceError, match="stopped the run for divergence"):
        check_skip_list(RunLayout.of(tmp_path))
    with pytest.raises(EvidenceError, match="stopped the run for divergence"):  # the next fit, before any step
        train(tmp_path, Regression(), TransactionalStrategy(stopping), 12)


@pytest.mark.parametrize("many", [("--trainer.devices", "2"), ("--trainer.devices", "[0, 1]"),
                                  ("--trainer.num_nodes", "2")], ids=["2 devices", "a list of 2", "2 nodes"])
def test_the_one_device_strategy_refuses_several_devices(tmp_path: Path, many: tuple[str, str],
                                                         capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """`--trainer.strategy transactional --trainer.devices 2` trained one process, exit 0, and config.yaml recorded
    two devices: Lightning's single-device strategy takes the first and says nothing."""
    from tests.helpers import fit
    from tests.test_bad_input import one_error_line

    root = tmp_path / "runs"
    args = ("--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu", "--trainer.strategy")
    assert fit(*args, "transactional", *many) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "trains one process on one device" in line and "use --trainer.strategy transactional_ddp" in line, line
    assert not root.exists() or not any(root.iterdir())  # refused before anything of a run was written
    assert fit(*args, "transactional", "--trainer.devices", "1", "--trainer.max_steps", "2") == 0
