"""Every lit_psion LightningModule takes Lightning's per-hook bookkeeping without torch's ``__setattr__``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lit_psion.core.run import read_latest
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


def test_a_step_row_is_one_write_beside_a_users_own_step_metric(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``self.log`` costs about half a millisecond; a row of loss, learning rate and six telemetry values was
    eight of them. Now the progress bar's value is the one ``self.log`` of a training row, the row is written
    whole, and a metric a user's callback logs on the step still reaches metrics.csv at that step."""
    calls: list[str] = []
    original = L.LightningModule.log

    def counting(self: L.LightningModule, name: str, *args: Any, **kwargs: Any) -> None:
        calls.append(name)
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(L.LightningModule, "log", counting)
    overlay = callbacks_config(tmp_path / "user.json", ("LogsOnStep", {}))
    root = tmp_path / "runs"
    assert fit("--config", overlay, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "6",
               "--trainer.log_every_n_steps", "2") == 0  # fmt: skip
    rows = list(csv.DictReader((root / read_latest(root) / "metrics.csv").open()))
    step_rows = [row for row in rows if row.get("train/loss")]
    assert [int(row["step"]) for row in step_rows] == [1, 3, 5]
    wanted = {"train/lr", "telemetry/grad_norm", "telemetry/update_norm", "telemetry/param_norm",
              "telemetry/tokens_per_s"}  # fmt: skip
    assert all(row.get(key) for row in step_rows for key in wanted)
    assert sorted(int(row["step"]) for row in rows if row.get("user/metric")) == [1, 3, 5]
    training = [name for name in calls if not name.startswith(("val/", "user/"))]
    assert training == ["train/loss"] * 3, training
