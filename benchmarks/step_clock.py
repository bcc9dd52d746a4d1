"""Step clocks for the benchmarks: when each training step ends, and how long it spent in the model."""

from __future__ import annotations

import time
import weakref
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lit_psion.nn import Decoder


class ModelTimer:
    """Seconds each step spends in the model's own forward and backward, from global module and tensor hooks that
    are the same on both sides: the forward of the training-mode :class:`Decoder`, and its backward from the
    gradient of its output to the last gradient accumulated into its parameters. What a step spends elsewhere
    (the loss, clipping, the optimizer, data, the loop and its hooks) is the step time less this."""

    def __init__(self) -> None:
        self.seconds, self._forward_start, self._backward_start, self._last_grad = 0.0, 0.0, None, 0.0
        self._hooked: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # not ids: a freed model's id is reused
        torch.nn.modules.module.register_module_forward_pre_hook(self._forward_begins)
        torch.nn.modules.module.register_module_forward_hook(self._forward_ends)

    def _forward_begins(self, module: torch.nn.Module, args: Any) -> None:
        if isinstance(module, Decoder) and module.training:
            self._forward_start = time.perf_counter()
            if module not in self._hooked:
                self._hooked.add(module)
                for param in module.parameters():
                    param.register_post_accumulate_grad_hook(self._accumulated)

    def _forward_ends(self, module: torch.nn.Module, args: Any, out: Any) -> None:
        if isinstance(module, Decoder) and module.training:
            self.seconds += time.perf_counter() - self._forward_start
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(self._backward_begins)

    def _backward_begins(self, grad: torch.Tensor) -> None:
        self._backward_start = time.perf_counter()

    def _accumulated(self, param: torch.Tensor) -> None:
        self._last_grad = time.perf_counter()

    def take(self) -> float:
        """The model's seconds since the last take (one step's, taken when the step ends)."""
        backward = self._last_grad - self._backward_start if self._backward_start is not None else 0.0
        if self._backward_start is not None and backward <= 0:
            raise RuntimeError("the model's backward was not timed: no parameter gradient after its output's")
        seconds, self.seconds, self._backward_start = self.seconds + backward, 0.0, None
        return seconds


MODEL_TIMER: ModelTimer | None = None
"""Installed by benchmarks/throughput.py's main() (global hooks, so only when that script runs). Every module call
on both sides then takes torch's hooked path: a few microseconds a step, the same on both, but absolute step times
are not comparable with runs of that script from before 2026-12-03, which had no hooks."""


class Clock:
    """Times of the ends of steps ``warmup`` .. ``steps`` (step n ends when n optimizer steps are done), and the
    seconds each of those steps spent in the model (when the :data:`MODEL_TIMER` is installed)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.ticks: list[float] = []
        self.model_seconds: list[float] = []

    def tick(self, done: int) -> None:
        model = MODEL_TIMER.take() if MODEL_TIMER is not None else None
        if self.warmup <= done <= self.steps:
            self.ticks.append(time.perf_counter())
            if model is not None and done > self.warmup:
                self.model_seconds.append(model)

    @property
    def outside_model_seconds(self) -> list[float]:
        """Each timed step's seconds outside the model's forward and backward."""
        return [step - model for step, model in zip(self.step_seconds, self.model_seconds, strict=True)]

    @property
    def seconds(self) -> float:
        return self.ticks[-1] - self.ticks[0]

    @property
    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.ticks, self.ticks[1:], strict=False)]


class StepTimer(Callback):
    """Ticks a :class:`Clock` at the end of every training step."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.clock.tick(trainer.global_step)


class SpanClock(Clock):
    """A :class:`Clock` given each timed step's start and end (steps interleaved with another loop's)."""

    def __init__(self, warmup: int, steps: int) -> None:
        super().__init__(warmup, steps)
        self.spans: list[float] = []

    def span(self, done: int, start: float | None, end: float) -> None:
        model = MODEL_TIMER.take() if MODEL_TIMER is not None else None
        if self.warmup < done <= self.steps and start is not None:
            self.spans.append(end - start)
            self.ticks.append(end)  # counted by the runs' checks, one per timed step
            if model is not None:
                self.model_seconds.append(model)

    @property
    def seconds(self) -> float:
        return sum(self.spans)

    @property
    def step_seconds(self) -> list[float]:
        return self.spans
