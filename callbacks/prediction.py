"""Write what ``predict`` returns: without a writer, Lightning hands the predictions back to the caller, and the
command line has no caller to hand them to.

    python -m lit_psion predict --config CONFIG.yaml --ckpt_path last \
        --trainer.callbacks+=lit_psion.callbacks.PredictionWriter --trainer.callbacks.out predictions
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import save
from typing_extensions import override

from lit_psion.core import atomic_write_bytes, atomic_write_json
from lit_psion.core.errors import ConfigError
from lit_psion.core.layout import refuse_output_in_a_run


class PredictionWriter(BasePredictionWriter):
    """Each rank's predictions as ``out/predictions-rank{R}.safetensors`` (one tensor per batch, ``batch-NNNNNN``
    by the batch's index) and ``out/predictions.json`` (the checkpoint predicted from, the batch count, each
    tensor's shape).

    Args:
        out: A new or empty directory, outside any run (refused before anything is predicted otherwise).
    """

    def __init__(self, out: str) -> None:
        super().__init__(write_interval="epoch")
        if not str(out).strip():
            raise ConfigError("PredictionWriter: out is empty; give the directory the predictions go to")
        self.out = Path(out).expanduser()

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Batches are named by their place in the split, which the loader serves in order: Lightning's sample
        # indices are not needed, and its warning that it could not track them says nothing a user can act on.
        warnings.filterwarnings("ignore", "Couldn't infer the batch indices fetched from your dataloader")
        refuse_output_in_a_run(self.out, flag="trainer.callbacks.out")
        if self.out.is_dir() and any(self.out.iterdir()):
            raise ConfigError(f"trainer.callbacks.out {str(self.out)!r} already holds files; give a new or empty "
                              "directory, so no earlier predictions are mixed in or overwritten")  # fmt: skip
        try:  # now, not after every batch is predicted (an empty directory is what a rerun may be given)
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"trainer.callbacks.out {str(self.out)!r} cannot be created ({error.strerror or error}); "
                              "give a writable directory") from error  # fmt: skip

    @override
    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any,
                           batch_indices: Any) -> None:  # fmt: skip
        loaders = predictions if predictions and isinstance(predictions[0], list) else [predictions]
        indices = batch_indices if batch_indices and isinstance(batch_indices[0], list) else [batch_indices]
        tensors: dict[str, torch.Tensor] = {}
        for loader, (outputs, ranks) in enumerate(zip(loaders, indices, strict=True)):
            for index, output in zip(ranks or range(len(outputs)), outputs, strict=True):
                if not isinstance(output, torch.Tensor):
                    raise ConfigError(f"PredictionWriter writes tensors; the model's predict_step returned a "
                                      f"{type(output).__name__}")  # fmt: skip
                name = f"batch-{index:06d}" if len(loaders) == 1 else f"loader-{loader}-batch-{index:06d}"
                tensors[name] = output.detach().cpu().contiguous()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.out / f"predictions-rank{trainer.global_rank}.safetensors", save(tensors))
        if trainer.is_global_zero:
            atomic_write_json(self.out / "predictions.json", {
                "ckpt_path": str(trainer.ckpt_path) if trainer.ckpt_path else None, "world_size": trainer.world_size,
                "batches": len(tensors), "shapes": {name: list(t.shape) for name, t in tensors.items()},
            })  # fmt: skip
            print(f"lit_psion: wrote {len(tensors)} batches of predictions to {self.out}")

