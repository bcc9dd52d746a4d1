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
        self._started = 0.0

    def _due(self, trainer: L.Trainer) -> bool:
        return (trainer.global_step + 1) % (self.every_n_steps or trainer.log_every_n_steps) == 0

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._started = time.perf_counter()

    @override
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._due(trainer):
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]
        grads = [p.grad for p in params if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else 0
        clip = trainer.gradient_clip_val
        pl_module.log("telemetry/grad_norm", float(grad_norm))
        if clip:
            pl_module.log("telemetry/clip_ratio", min(1.0, float(clip) / max(float(grad_norm), 1e-12)))
        self._before = [p.detach().clone() for p in params]

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           idx: int) -> None:  # fmt: skip
        if self._before is None:
            return
        params = [p.detach() for p in pl_module.parameters() if p.requires_grad]
        # A parameter whose shape changed in the step (a graph core grew an edge) moved wholly: its norm is its update.
        before = self._before if len(self._before) == len(params) else [torch.zeros(0)] * len(params)
        update = torch.stack([torch.linalg.vector_norm(p - b if p.shape == b.shape else p)
                              for p, b in zip(params, before, strict=True)])  # fmt: skip
        self._before = None
        seconds = max(time.perf_counter() - self._started, 1e-9)
        tokens = global_tokens(batch)
        n_params = sum(p.numel() for p in params)
        flops = 6 * n_params * tokens / seconds  # forward + backward of a dense model (Kaplan et al. 2020)
        pl_module.log("telemetry/update_norm", float(torch.linalg.vector_norm(update)))
        pl_module.log("telemetry/param_norm", float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p) for p in params]))))  # fmt: skip
        if not tokens:  # not a language model's batch (a graph core's trajectories): its samples, not 0 tokens/s
            if isinstance(batch, dict) and (ids := batch.get("global_sample_ids", batch.get("sample_ids"))) is not None:
                pl_module.log("telemetry/samples_per_s", len(ids) / seconds)
            return
        pl_module.log("telemetry/tokens_per_s", tokens / seconds)
        pl_module.log("telemetry/flops_per_s", flops)
        if self.peak_flops:
            pl_module.log("telemetry/mfu", flops / (self.peak_flops * trainer.world_size))


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
