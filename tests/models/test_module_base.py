"""Every lit_psion LightningModule takes Lightning's per-hook bookkeeping without torch's ``__setattr__``."""

from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_psion.core.run import read_latest
from lit_psion.core.step_logs import keep_step_logs, log_kept_step_logs
from lit_psion.models import AdapterLM, DecoderLM, GraphCore, MosaicLM
from lit_psion.models.base import LitModule
from lit_psion.sessions.modules import BasePretrain, OnlineSession
from tests.helpers import callbacks_config, fit


@pytest.mark.parametrize("cls", [DecoderLM, MosaicLM, AdapterLM, GraphCore, BasePretrain, OnlineSession])
def test_every_model_is_a_lit_module(cls: type) -> None:
    assert issubclass(cls, LitModule)


def test_the_hook_name_skips_torchs_setattr_and_everything_else_takes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning sets ``_current_fx_name`` about 44 times a training step; through ``torch.nn.Module.__setattr__``
    each cost about 4 us (0.2 ms a step, benchmarks/throughput.py)."""
    module, layer, other = LitModule(), torch.nn.Linear(2, 2), torch.nn.Linear(1, 1)
    through_torch: list[str] = []
    original = torch.nn.Module.__setattr__

    def counting(self: torch.nn.Module, name: str, value: Any) -> None:
        through_torch.append(name)
        original(self, name, value)

    monkeypatch.setattr(torch.nn.Module, "__setattr__", counting)
    for value in ("training_step", "on_train_batch_end", None):
        module._current_fx_name = value
        assert module._current_fx_name == value
    assert through_torch == []
    module.weight = torch.nn.Parameter(torch.ones(2))  # parameters, modules and buffers are torch's to register
    module.layer = layer
    module._current_fx_name = other  # not a hook name: torch's path too
    assert through_torch == ["weight", "layer", "_current_fx_name"]
    assert "weight" in module._parameters and "layer" in module._modules and "_current_fx_name" in module._modules


def test_a_step_row_is_one_write_and_one_row_beside_a_users_own_step_metric(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``self.log`` costs a quarter to half a millisecond; a row of loss, learning rate and six telemetry values
    was eight of them. Without a value of the user's, a row is one write and no ``self.log``. With one (a callback's
    metric on every step), lit_psion's values join Lightning's write of it: one row per step holding both (they
    were two rows of the same step)."""
    calls: list[str] = []
    original = L.LightningModule.log

    def counting(self: L.LightningModule, name: str, *args: Any, **kwargs: Any) -> None:
        calls.append(name)
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(L.LightningModule, "log", counting)
    wanted = {"train/loss", "train/lr", "telemetry/grad_norm", "telemetry/update_norm", "telemetry/param_norm",
              "telemetry/tokens_per_s"}  # fmt: skip
    for users in (False, True):
        calls.clear()
        overlay = callbacks_config(tmp_path / "user.json", *([("LogsOnStep", {})] if users else []))
        root = tmp_path / f"runs-{users}"
        assert fit("--config", overlay, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "6",
                   "--trainer.log_every_n_steps", "2") == 0  # fmt: skip
        rows = [row for row in csv.DictReader((root / read_latest(root) / "metrics.csv").open()) if row.get("step")]
        training = [row for row in rows if any(row.get(key) for key in wanted | {"user/metric"})]
        assert [int(row["step"]) for row in training] == [1, 3, 5], training  # one row a step
        assert all(row.get(key) for row in training for key in wanted)
        assert all(bool(row.get("user/metric")) == users for row in training)
        own = [name for name in calls if not name.startswith(("val/", "user/"))]
        assert (own == []) != users, own


def test_a_row_joined_to_a_users_values_never_repeats_an_earlier_rows_values(tmp_path: Path) -> None:
    """Lightning keeps a step value until the epoch ends: telemetry measured every 4th step, joined to rows written
    every 2nd, would have reached the rows between its measurements, and the last row, too."""
    overlay = callbacks_config(tmp_path / "user.json", ("LogsOnStep", {}))
    root = tmp_path / "runs"
    assert fit("--config", overlay, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "9",
               "--trainer.log_every_n_steps", "2", "--telemetry.every_n_steps", "4") == 0  # fmt: skip
    rows = [row for row in csv.DictReader((root / read_latest(root) / "metrics.csv").open()) if row.get("train/loss")]
    measured = [int(row["step"]) for row in rows if row.get("telemetry/grad_norm")]
    assert [int(row["step"]) for row in rows] == [1, 3, 5, 7, 8] and measured == [3, 7], rows
    assert all(row.get("user/metric") for row in rows)
    assert len({row["train/loss"] for row in rows}) == len(rows)  # each row's own loss


class SeesTheLoss(Callback):
    """Records, as each step starts, the loss the trainer's progress-bar and callback metrics hold."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        shown, monitored = trainer.progress_bar_metrics.get("train/loss"), trainer.callback_metrics.get("train/loss")
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps([trainer.global_step, shown, monitored if monitored is None else float(monitored)]))
            out.write("\n")


def test_the_loss_reaches_the_progress_bar_and_a_monitoring_callback_without_self_log(tmp_path: Path) -> None:
    """The row's loss goes where ``self.log(..., prog_bar=True)`` would put it: every progress bar shows it, and an
    ``EarlyStopping`` monitoring ``train/loss`` finds it (strict: a missing key stops the fit with an error)."""
    seen, root = tmp_path / "seen.jsonl", tmp_path / "runs"
    args = ("--trainer.default_root_dir", str(root), "--trainer.max_steps", "6", "--trainer.log_every_n_steps", "2",
            "--trainer.callbacks+=tests.models.test_module_base.SeesTheLoss", f"--trainer.callbacks.path={seen}",
            "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping", "--trainer.callbacks.monitor=train/loss",
            "--trainer.callbacks.check_on_train_epoch_end=false", "--trainer.callbacks.patience=100")  # fmt: skip
    assert fit(*args) == 0
    rows = {int(row["step"]): float(row["train/loss"])
            for row in csv.DictReader((root / read_latest(root) / "metrics.csv").open()) if row.get("train/loss")}
    assert sorted(rows) == [1, 3, 5]
    records = [json.loads(line) for line in seen.read_text().splitlines()]
    assert [step for step, *_ in records] == list(range(6))
    for step, shown, monitored in records:
        written = [row for row in rows if row < step]
        expected = rows[max(written)] if written else None
        assert shown == monitored == (expected if expected is None else pytest.approx(expected, rel=1e-6)), step


class _Regression(LitModule):
    """A tiny LitModule that records which gradients each hook sees."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.seen: dict[str, list[bool]] = {"on_before_optimizer_step": [], "on_train_batch_end": []}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.seen["on_before_optimizer_step"].append(self.layer.weight.grad is not None)

    def on_train_batch_end(self, *args: Any) -> None:
        self.seen["on_train_batch_end"].append(self.layer.weight.grad is not None)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.1)


class _LightningsOrder(_Regression):
    """The same module with Lightning's own order: gradients freed just before the next backward."""

    optimizer_step = L.LightningModule.optimizer_step
    optimizer_zero_grad = L.LightningModule.optimizer_zero_grad


def _train(module: _Regression, accumulate: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(24, 4, generator=generator)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    trainer = L.Trainer(max_steps=3, accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=0.5)  # fmt: skip
    trainer.fit(module, data)
    return module.layer.weight.detach().clone()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_gradients_are_freed_with_the_step_and_training_is_unchanged(accumulate: int) -> None:
    """A lit_psion module frees its gradients as soon as the optimizer has stepped (a plain loop's order): the
    next forward runs without them, and the weights are bitwise those of Lightning's order, accumulating or not.
    """
    ours, lightnings = _Regression(), _LightningsOrder()
    assert torch.equal(_train(ours, accumulate), _train(lightnings, accumulate))
    micro_batches = 3 * accumulate
    assert ours.seen["on_before_optimizer_step"] == [True] * 3
    # Between micro-batches of one step the gradients accumulate; once the step is taken they are gone.
    assert ours.seen["on_train_batch_end"] == [(i + 1) % accumulate != 0 for i in range(micro_batches)]
    assert lightnings.seen["on_train_batch_end"] == [True] * micro_batches
    assert ours.layer.weight.grad is None


def test_training_steps_signature_is_read_once() -> None:
    """Lightning asks every step whether training_step takes batch_idx (inspect.getfullargspec): each lit_psion
    model's training_step carries its signature, so the answer is not rebuilt."""
    for cls in (DecoderLM, MosaicLM, AdapterLM, GraphCore, BasePretrain, OnlineSession, _Regression):
        step = cls.training_step
        assert isinstance(vars(step).get("__signature__"), inspect.Signature), cls
        assert list(step.__signature__.parameters)[:3] == ["self", "batch", "batch_idx"]


class ForgetsSuper(DecoderLM):
    """A user's DecoderLM whose on_train_batch_end does its own thing and leaves out lit_psion's."""

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ends = getattr(self, "ends", 0) + 1


class CallsSuper(ForgetsSuper):
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        DecoderLM.on_train_batch_end(self, outputs, batch, batch_idx)


@pytest.mark.parametrize(("cls", "warned"), [("ForgetsSuper", True), ("CallsSuper", False)])
def test_a_subclass_that_does_not_write_the_step_row_is_told_once(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  cls: str, warned: bool) -> None:  # fmt: skip
    """Its metrics.csv silently had no train/loss, train/lr or telemetry column."""
    root = tmp_path / "runs"
    assert fit("--model.class_path", f"{__name__}.{cls}", "--trainer.default_root_dir", str(root),
               "--trainer.max_steps", "4", "--trainer.limit_val_batches", "0") == 0  # fmt: skip
    err = capsys.readouterr().err
    said = f"lit_psion: warning: {cls}.on_train_batch_end does not call super().on_train_batch_end("
    assert err.count(said) == (1 if warned else 0), err
    metrics = root / read_latest(root) / "metrics.csv"
    assert (metrics.is_file() and "train/loss" in metrics.read_text().splitlines()[0]) is not warned


class LogsAfterSuper(DecoderLM):
    """A user's DecoderLM that logs a metric of its own per step after lit_psion's on_train_batch_end has run."""

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self.log("user/after", float(self.trainer.global_step), on_step=True, on_epoch=False)


def test_a_subclass_logging_after_super_gets_one_row_a_step(tmp_path: Path) -> None:
    """lit_psion decides a row's write before the subclass's value exists: that value must still land in the same
    row of the same step, in every epoch (not a second row of that step)."""
    root = tmp_path / "runs"
    assert fit("--model.class_path", f"{__name__}.LogsAfterSuper", "--trainer.default_root_dir", str(root),
               "--trainer.max_steps", "8", "--trainer.log_every_n_steps", "2", "--trainer.limit_train_batches", "3",
               "--trainer.limit_val_batches", "0") == 0  # fmt: skip
    rows = [row for row in csv.DictReader((root / read_latest(root) / "metrics.csv").open()) if row.get("step")]
    steps = [int(row["step"]) for row in rows]
    assert steps == sorted(set(steps)), rows  # one row a step, in every epoch (three steps each)
    training = [row for row in rows if row.get("train/loss")]
    assert len(training) >= 4 and {int(row["epoch"]) for row in training} == {0, 1, 2}, rows
    assert all(float(row["user/after"]) == int(row["step"]) + 1 for row in training), rows


def test_the_last_row_of_a_fit_stopped_between_rows_keeps_what_a_user_logged(tmp_path: Path) -> None:
    """lit_psion writes the row of a fit's last step when Lightning's interval skips it: a user's self.log value of
    that step was left out of it (rows at steps 2 and 4 had it; the last, step 5, did not)."""
    overlay = callbacks_config(tmp_path / "user.json", ("LogsOnStep", {}))
    root = tmp_path / "runs"
    assert fit("--config", overlay, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "5",
               "--trainer.log_every_n_steps", "2", "--trainer.limit_val_batches", "0") == 0  # fmt: skip
    rows = list(csv.DictReader((root / read_latest(root) / "metrics.csv").open()))
    assert [int(row["step"]) for row in rows if row.get("train/loss")] == [1, 3, 4]
    logged = {int(row["step"]): float(row["user/metric"]) for row in rows if row.get("user/metric")}
    assert logged == {1: 2.0, 3: 4.0, 4: 5.0}  # the global step as the user's callback saw it


def test_a_step_accumulated_over_micro_batches_writes_one_row(tmp_path: Path) -> None:
    """Each micro-batch of a logged step wrote a row of its own, two rows of one step with different losses."""
    root = tmp_path / "runs"
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3", "--trainer.log_every_n_steps",
               "1", "--trainer.accumulate_grad_batches", "2", "--trainer.limit_val_batches", "0") == 0  # fmt: skip
    rows = list(csv.DictReader((root / read_latest(root) / "metrics.csv").open()))
    assert [int(row["step"]) for row in rows if row.get("train/loss")] == [0, 1, 2]
    assert all(row.get("train/lr") and row.get("telemetry/grad_norm") for row in rows if row.get("train/loss"))


class _KeepsANumber(_Regression):
    """A module whose step keeps its loss as a Python number, not a tensor."""

    flushes_step_logs = True

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        keep_step_logs(self, **{"train/loss": float(loss)})
        return loss

    def on_train_batch_end(self, *args: Any) -> None:
        log_kept_step_logs(self)


def test_a_loss_kept_as_a_number_reaches_a_monitoring_callback_as_a_tensor() -> None:
    module = _KeepsANumber()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, generator=generator)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1)  # fmt: skip
    trainer.fit(module, data)
    monitored, shown = trainer.callback_metrics["train/loss"], trainer.progress_bar_metrics["train/loss"]
    assert isinstance(monitored, torch.Tensor) and monitored.dtype == torch.float32 and monitored.dim() == 0
    assert float(monitored) == pytest.approx(shown) and shown > 0
