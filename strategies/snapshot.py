"""What a transactional step puts back when it is rolled back (parameters, running statistics, optimizer state), and
what it watches and keeps of a step: the closure's loss and gradient norm, the RNG state, plain batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch.distributed.tensor import DTensor


class StepSnapshot:
    """Trainable parameters, the module's persistent buffers (BatchNorm's running statistics, which a forward in
    training mode updates) and optimizer state before a step; ``restore`` puts them back bitwise.

    A grad scaler's state is deliberately not restored: its update after an overflow (a lower scale)
    is what lets the next step succeed.
    """

    def __init__(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer,
                 buffers: list[torch.Tensor]) -> None:  # fmt: skip
        self.params, self.buffers = params, buffers
        self.values = [p.detach().clone() for p in params]
        self.buffer_values = copies(buffers)
        self.optimizer = optimizer
        self.optimizer_state = apply_to_collection(optimizer.state_dict(), torch.Tensor, lambda t: t.detach().clone())

    @torch.no_grad()
    def restore(self) -> None:
        for param, value in zip(self.params, self.values, strict=True):
            param.copy_(value)
        put_back(self.buffers, self.buffer_values)
        self.optimizer.load_state_dict(self.optimizer_state)


def state_buffers(module: torch.nn.Module) -> list[torch.Tensor]:
    """The buffers a checkpoint keeps (persistent ones), which a forward may change: a running statistic."""
    return [buffer for sub in module.modules() for name, buffer in sub._buffers.items()
            if buffer is not None and name not in sub._non_persistent_buffers_set]  # fmt: skip


def copies(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [tensor.detach().clone() for tensor in tensors]


@torch.no_grad()
def put_back(tensors: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    for tensor, value in zip(tensors, values, strict=True):
        tensor.copy_(value)


def rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [])


def set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.set_rng_state(state[0])
    if state[1]:
        torch.cuda.set_rng_state_all(state[1])


def is_plain(obj: Any) -> bool:
    """Whether ``obj`` is tensors and plain Python data only (what ``torch.load(weights_only=True)`` reads back)."""
    if isinstance(obj, torch.Tensor) or obj is None or type(obj) in (bool, int, float, str):
        return True
    if type(obj) is dict:
        return all(type(k) in (int, str) and is_plain(v) for k, v in obj.items())
    return type(obj) in (list, tuple) and all(is_plain(v) for v in obj)


class WatchedClosure:
    """Lightning's training closure, remembering the loss it returned and the gradient norm it left."""

    def __init__(self, closure: Callable[[], Any], params: list[torch.Tensor], scaler: Any) -> None:
        self.closure, self.params, self.scaler = closure, params, scaler
        self.loss = torch.tensor(float("nan"))
        self.grad_norm = torch.zeros(())
        self.skipped = False

    def __call__(self) -> Any:
        loss = self.closure()
        self.skipped = loss is None  # training_step returned None: Lightning's way to skip a batch
        if isinstance(loss, torch.Tensor):
            self.loss = loss.detach().float()
        norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in self.params if p.grad is not None]
        if norms:
            norm = torch.linalg.vector_norm(torch.stack(norms))
            if isinstance(norm, DTensor):  # sharded gradients: the whole model's norm, the same on every rank
                norm = norm.full_tensor()
            self.grad_norm = norm / self.scaler.get_scale() if self.scaler is not None else norm  # unscaled
        return loss
