"""The LightningModule every lit_psion model builds on."""

from __future__ import annotations

from typing import Any

import lightning as L


class LitModule(L.LightningModule):
    """A LightningModule whose hook bookkeeping is cheap.

    Lightning records which hook is running in ``module._current_fx_name`` before and after every hook call it
    makes: about 44 assignments a training step. Each goes through ``torch.nn.Module.__setattr__``, which checks
    whether the value is a parameter, a module or a buffer (about 4 us apiece here, 0.2 ms a step, more than
    a small model's step can spare: benchmarks/throughput.py). The value is a hook name or None, never one of
    those, so it is stored directly; every other attribute takes torch's path.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name" and (value is None or type(value) is str):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)
