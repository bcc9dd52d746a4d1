"""Training telemetry: gradient, update and parameter norms, clip ratio, throughput and MFU.

Telemetry goes to the loggers (and so to ``metrics.csv``); it is measurement, not receipt truth,
and never enters the receipt chain.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lit_psion.core.errors import ConfigError
from lit_psion.core.step_logs import is_last_step, log_step_values


class Telemetry(Callback):
    """Log ``telemetry/*`` every ``every_n_steps`` optimizer steps.

    Args:
        every_n_steps: Steps between measurements (norms need a copy of the parameters, so not every
            step); ``None`` measures on the steps the trainer writes log rows (``log_every_n_steps``).
        peak_flops: The device's peak FLOP/s for the MFU estimate (``None``: log achieved FLOP/s only).
    """

    def __init__(self, every_n_steps: int | None = None, peak_flops: float | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError(f"telemetry.every_n_steps must be >= 1, got {every_n_steps!r}")
        if peak_flops is not None and peak_flops <= 0:
            raise ConfigError(f"telemetry.peak_flops must be positive or null, got {peak_flops!r}")
        self.every_n_steps, self.peak_flops = every_n_steps, peak_flops
        self._before: list[torch.Tensor] | None = None
        self._spare: list[torch.Tensor] | None = None
        """On CPU, the last measurement's copy, filled again by the next: a fresh copy of a model's size costs page
        faults as the allocator takes it from the system again (an accelerator's caching allocator reuses it).
        Plain tensors only: a sharded parameter (a DTensor) has no fused copy."""
        self._started = 0.0

    def _due(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        every = self.every_n_steps or trainer.log_every_n_steps
        return (trainer.global_step + 1) % every == 0 or (self.every_n_steps is None and is_last_step(pl_module))

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._started = time.perf_counter()

    @override
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._due(trainer, pl_module):
            return
        trained = [p for p in pl_module.parameters() if p.requires_grad]  # (one walk of the module tree)
        grad_norm = float(total_norm([p.grad for p in trained if p.grad is not None]))
        clip = trainer.gradient_clip_val
        log_step_values(pl_module, **{"telemetry/grad_norm": grad_norm},
                        **({"telemetry/clip_ratio": min(1.0, float(clip) / max(grad_norm, 1e-12))} if clip else {}))
        self._before = copy_into(self._spare, [p.detach() for p in trained])
        self._spare = None

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           idx: int) -> None:  # fmt: skip
        if self._before is None:
            return
        params = [p.detach() for p in pl_module.parameters() if p.requires_grad]
        before, self._before = self._before, None
        seconds = max(time.perf_counter() - self._started, 1e-9)
        tokens = global_tokens(batch)
        flops = 6 * sum(p.numel() for p in params) * tokens / seconds  # forward + backward (Kaplan et al. 2020)
        values = {"telemetry/update_norm": update_norm(params, before),
                  "telemetry/param_norm": float(total_norm(params))}  # fmt: skip
        self._spare = before if all(type(b) is torch.Tensor and b.device.type == "cpu" for b in before) else None
        if tokens:
            values |= {"telemetry/tokens_per_s": tokens / seconds, "telemetry/flops_per_s": flops}
            if self.peak_flops:
                values["telemetry/mfu"] = flops / (self.peak_flops * trainer.world_size)
        elif isinstance(batch, dict) and (ids := batch.get("global_sample_ids", batch.get("sample_ids"))) is not None:
            values["telemetry/samples_per_s"] = len(ids) / seconds  # a graph core's trajectories: samples, not tokens
        log_step_values(pl_module, **values)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._before = self._spare = None  # a model's size of memory, not kept past the fit


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all the tensors together (0 for none)."""
    return torch.nn.utils.get_total_norm(tensors) if tensors else torch.zeros(())


def copy_into(spare: list[torch.Tensor] | None, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """A copy of ``params``: into ``spare`` where it matches them tensor by tensor, otherwise a new one."""
    def layout(t: torch.Tensor) -> tuple:
        return t.shape, t.dtype, t.device

    if spare is not None and [layout(s) for s in spare] == [layout(p) for p in params]:
        torch._foreach_copy_(spare, params)
        return spare
    return [p.clone() for p in params]


def update_norm(params: list[torch.Tensor], before: list[torch.Tensor]) -> float:
    """The 2-norm of the step's change to every parameter. A parameter whose shape changed in the step (a graph
    core grew an edge) moved wholly: its norm is its update."""
    before = before if len(before) == len(params) else [torch.zeros(0)] * len(params)
    kept = [(p, b) for p, b in zip(params, before, strict=True) if p.shape == b.shape]
    if kept:  # in place, in ``before`` (a copy this callback owns): no second copy of the model to allocate
        torch._foreach_sub_([b for _, b in kept], [p for p, _ in kept])
    grown = [p for p, b in zip(params, before, strict=True) if p.shape != b.shape]
    return float(total_norm([b for _, b in kept] + grown))


def global_tokens(batch: Any) -> int:
    """Tokens in the step's global batch: a rank's slice scaled by the global batch's sample count over the
    slice's, so tokens/s is the whole mesh's, whatever the world size."""
    if not isinstance(batch, dict) or "input_ids" not in batch:
        return 0
    tokens = batch["input_ids"].numel()
    local, everyone = batch.get("sample_ids"), batch.get("global_sample_ids")
    if local is not None and everyone is not None and len(local) > 0:
        return tokens * len(everyone) // len(local)
    return tokens
