"""The LightningModule every lit_psion model builds on."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import lightning as L
import torch

from lit_psion.core.errors import CheckpointError
from lit_psion.core.step_logs import drop_unwritten_step_logs, forget_joined_step_logs


class LitModule(L.LightningModule):
    """A LightningModule whose per-step bookkeeping is cheap, and whose gradients are freed with the step.

    Gradients are freed (set to None) as soon as the optimizer has stepped, as a plain loop does, rather than
    just before the next backward, Lightning's default: the next forward runs without the last step's
    gradients in memory, and the cost of freeing them (with torch's profiling marker, about 0.2 ms a step
    right after a forward on a small model) is paid while the optimizer's tensors are still at hand. So a
    callback reads gradients in ``on_after_backward`` or ``on_before_optimizer_step``, never in
    ``on_train_batch_end``. A strategy that accumulates gradients itself (DeepSpeed) keeps Lightning's order.

    Lightning records which hook is running in ``module._current_fx_name`` before and after every hook call it
    makes: about 44 assignments a training step. Each goes through ``torch.nn.Module.__setattr__``, which checks
    whether the value is a parameter, a module or a buffer (about 4 us apiece here, 0.2 ms a step, more than
    a small model's step can spare: benchmarks/throughput.py). The value is a hook name or None, never one of
    those, so it is stored directly; every other attribute takes torch's path.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Lightning reads training_step's signature every step (whether it takes batch_idx) with
        # inspect.getfullargspec, which rebuilds it each time unless the function carries one: about 60 us a step.
        step = cls.__dict__.get("training_step")
        if inspect.isfunction(step) and getattr(step, "__signature__", None) is None:
            step.__signature__ = inspect.signature(step)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name" and (value is None or type(value) is str):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As torch's, except that weights which do not fit this model (names missing or extra, other shapes: a
        checkpoint whose manifest was rewritten over other tensors) are a CheckpointError (exit 4), not a crash."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as error:
            if not str(error).startswith("Error(s) in loading state_dict"):
                raise
            problems = " ".join(str(error).split("\n", 1)[-1].split())
            raise CheckpointError(f"the checkpoint's weights do not fit {type(self).__name__}: {problems[:300]}; "
                                  "load it with the model of the run that wrote it") from error  # fmt: skip

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        # A model that writes its step's row in on_train_batch_end has kept nothing when the next step starts,
        # unless a subclass's on_train_batch_end left out lit_psion's: its rows are lost, so say it once.
        forget_joined_step_logs(self)
        told = "_lit_psion_told_unwritten"
        if getattr(self, "flushes_step_logs", False) and drop_unwritten_step_logs(self) and told not in vars(self):
            self.__dict__[told] = True
            if self.trainer.is_global_zero:
                print(f"lit_psion: warning: {type(self).__name__}.on_train_batch_end does not call "
                      "super().on_train_batch_end(outputs, batch, batch_idx), which writes the step's row: "
                      "train/loss, train/lr and telemetry are not reaching metrics.csv; call it", file=sys.stderr)
        return super().on_train_batch_start(batch, batch_idx)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if not self.trainer.strategy.handles_gradient_accumulation:
            optimizer.zero_grad(set_to_none=True)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        # Lightning calls this before each backward that starts a step: the last step freed its gradients
        # already, unless something since made some (or a strategy accumulates them itself).
        if self.trainer.strategy.handles_gradient_accumulation or any(
                p.grad is not None for group in optimizer.param_groups for p in group["params"]):  # fmt: skip
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)
