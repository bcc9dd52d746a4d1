"""Every lit_psion LightningModule takes Lightning's per-hook bookkeeping without torch's ``__setattr__``."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lit_psion.models import AdapterLM, DecoderLM, GraphCore, MosaicLM
from lit_psion.models.base import LitModule
from lit_psion.sessions.modules import BasePretrain, OnlineSession


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
