"""What a transactional step puts back when it is rolled back: parameters, running statistics, optimizer state."""

from __future__ import annotations

import torch
from lightning_utilities.core.apply_func import apply_to_collection


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
