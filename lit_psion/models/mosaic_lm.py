"""``MosaicLM``: next-token training of :class:`lit_psion.nn.mosaic.Mosaic` with its auxiliary heads.

Objective (seed 003): next-token cross-entropy
+ ``aux_opcode_weight`` * opcode cross-entropy (teacher ``opcode_targets``)
+ ``aux_commitment_weight`` * commitment cross-entropy (teacher ``commitment_targets`` in
{-1, 0, +1} mapped to classes {0: close, 1: neutral, 2: open}); -100 positions are ignored.

Recall accuracy (``val/recall_acc``) is the next-token accuracy on the targets a batch's
``recall_mask`` flags: the value tokens of MemoryRead events, which only recalling the write predicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_psion.core.contracts import DataFacts, model_signature
from lit_psion.core.errors import ConfigError
from lit_psion.core.step_logs import keep_step_logs
from lit_psion.models.decoder_lm import DecoderLM
from lit_psion.nn.decoder import DecoderConfig
from lit_psion.nn.mosaic import Mosaic, MosaicConfig
from lit_psion.nn.optim import OptimizerConfig

IGNORE = -100


def masked_ce(logits: torch.Tensor, labels: torch.Tensor, world: int = 1,
              reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:  # fmt: skip
    """Cross-entropy over the positions not labelled ``IGNORE``, as this rank's share of the global-batch mean.

    With ``world`` ranks whose gradients DDP averages, each returns ``world * sum / global_count`` (the
    count summed over ranks by ``reduce_sum``); on one rank it is the plain mean. No labelled position
    anywhere: 0, with the graph intact (every rank runs the same collectives and backward).
    """
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    count = (labels != IGNORE).sum().to(total.dtype)
    if reduce_sum is not None:
        count = reduce_sum(count.detach())
    return total * world / count.clamp_min(1)


COMMITMENT_CLASSES = ("close", "neutral", "open")


def recall_labels(targets: torch.Tensor, recall_mask: torch.Tensor) -> torch.Tensor:
    """``targets`` where ``recall_mask`` flags a MemoryRead value token, -100 (not counted) elsewhere."""
    return torch.where(recall_mask, targets, IGNORE)


def recall_accuracy_metric(vocab_size: int) -> MulticlassAccuracy:
    """Greedy next-token accuracy on the targets :func:`recall_labels` keeps (update it with logits (N, vocab) and
    those labels (N,); -100 is not counted)."""
    return MulticlassAccuracy(num_classes=vocab_size, average="micro", ignore_index=IGNORE)


def commitment_labels(deltas: torch.Tensor) -> torch.Tensor:
    """Teacher deltas {-1, 0, +1} (or -100) as class indices {0, 1, 2} (or -100)."""
    return torch.where(deltas == IGNORE, deltas, (deltas + 1).clamp(0, 2))


class MosaicLM(DecoderLM):
    """The event-native MOSAIC decoder.

    Args:
        decoder: Shape of the core decoder (``vocab_size``/``block_size`` come from the data via the CLI).
        mosaic: Memory and heads.
        optimizer: As for DecoderLM.
        aux_opcode_weight: Weight of the opcode cross-entropy.
        aux_commitment_weight: Weight of the commitment cross-entropy.
        data_facts: The data's vocabulary and context (linked by the CLI).
    """

    signed_settings: ClassVar[tuple[str, ...]] = ("decoder", "mosaic")

    def __init__(
        self,
        decoder: DecoderConfig | None = None,
        mosaic: MosaicConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        aux_opcode_weight: float = 0.1,
        aux_commitment_weight: float = 0.1,
        data_facts: DataFacts | None = None,
    ) -> None:
        super().__init__(decoder, optimizer, data_facts)
        if aux_opcode_weight < 0 or aux_commitment_weight < 0:
            raise ConfigError(f"aux weights must be >= 0, got {aux_opcode_weight!r} and {aux_commitment_weight!r}")
        self.mosaic_config = mosaic or MosaicConfig()
        self.model = Mosaic(self.decoder_config, self.mosaic_config)
        self.aux_opcode_weight, self.aux_commitment_weight = aux_opcode_weight, aux_commitment_weight
        self.val_parts = torch.nn.ModuleDict({name: MeanMetric() for name in ("lm_ce", "aux_opcode_ce",
                                                                               "aux_commitment_ce")})  # fmt: skip
        self.val_commitment_accuracy = MulticlassAccuracy(num_classes=3, average=None, ignore_index=IGNORE)
        self.val_recall_accuracy = recall_accuracy_metric(self.decoder_config.vocab_size)

    @property
    def model_signature(self) -> str:
        return model_signature("MosaicLM", decoder=dataclasses.asdict(self.decoder_config),
                               mosaic=self.mosaic_config.signed())  # fmt: skip

    def forward(self, input_ids: torch.Tensor, memory_gates: bool = True) -> dict[str, torch.Tensor]:
        return self.model(input_ids, memory_gates=memory_gates)

    def generate(self, *args: object, **kwargs: object) -> torch.Tensor:
        raise NotImplementedError("MosaicLM predicts events: use `python -m lit_psion events predict`")

    def objective(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        """Total loss, its parts, and the model outputs.

        Every part is a mean over the labelled positions of the *global* batch: under DDP a rank's
        slice holds its own count of labelled tokens, so each rank divides its sum by the count over
        all ranks (one all-reduce) instead of by its own, and DDP's gradient average is then exactly
        the single-process gradient of the global batch.
        """
        out = self.model(batch["input_ids"])
        world, reduce_sum = self._global_batch()
        parts = {"lm_ce": masked_ce(out["logits"].flatten(0, 1), batch["targets"].flatten(), world, reduce_sum)}
        loss = parts["lm_ce"]
        opcode_targets = batch.get("opcode_targets")
        if opcode_targets is not None and (world > 1 or (opcode_targets != IGNORE).any()):
            parts["aux_opcode_ce"] = masked_ce(out["mosaic_opcode_logits"].float().flatten(0, 1),
                                               opcode_targets.flatten(), world, reduce_sum)  # fmt: skip
            loss = loss + self.aux_opcode_weight * parts["aux_opcode_ce"]
        commitment = batch.get("commitment_targets")
        logits = out.get("mosaic_commitment_logits")
        if commitment is not None and logits is not None and (world > 1 or (commitment != IGNORE).any()):
            labels = commitment_labels(commitment).flatten()
            parts["aux_commitment_ce"] = masked_ce(logits.float().flatten(0, 1), labels, world, reduce_sum)
            parts["aux_commitment_weighted"] = self.aux_commitment_weight * parts["aux_commitment_ce"]
            loss = loss + parts["aux_commitment_weighted"]
        return loss, parts, out

    def _global_batch(self) -> tuple[int, Callable[[torch.Tensor], torch.Tensor] | None]:
        """The world a training step's batch is sliced over, and how to sum a count over it (None: one rank)."""
        trainer = self._trainer
        if trainer is None or not self.training or trainer.world_size == 1:
            return 1, None
        return trainer.world_size, lambda count: trainer.strategy.reduce(count, reduce_op="sum")

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        loss, _, out = self.objective(batch)
        return loss, out["logits"]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, parts, _ = self.objective(batch)
        keep_step_logs(self, **{"train/loss": loss}, **{f"train/{name}": value for name, value in parts.items()})
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, parts, out = self.objective(batch)
        self.val_loss.update(loss)
        self.log("val/loss", self.val_loss, prog_bar=True)
        for name, value in parts.items():
            if name in self.val_parts:
                self.val_parts[name].update(value)
                self.log(f"val/{name}", self.val_parts[name])
        if "mosaic_commitment_logits" in out and "commitment_targets" in batch:
            self.val_commitment_accuracy.update(out["mosaic_commitment_logits"].flatten(0, 1),
                                                commitment_labels(batch["commitment_targets"]).flatten())  # fmt: skip
        recall_mask = batch.get("recall_mask")
        if recall_mask is not None and recall_mask.any():
            self.val_recall_accuracy.update(out["logits"].flatten(0, 1),
                                            recall_labels(batch["targets"], recall_mask).flatten())  # fmt: skip

    def on_validation_epoch_end(self) -> None:
        if self.val_commitment_accuracy.update_count:
            accuracy = self.val_commitment_accuracy.compute()
            for name, value in zip(COMMITMENT_CLASSES, accuracy, strict=True):
                self.log(f"val/commitment_acc_{name}", value)
            self.val_commitment_accuracy.reset()
        if self.val_recall_accuracy.update_count:
            self.log("val/recall_acc", self.val_recall_accuracy.compute())
            self.val_recall_accuracy.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, _, _ = self.objective(batch)
        self.log("test/loss", loss, batch_size=batch["input_ids"].shape[0])  # (a guessed size is warned about)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(batch["input_ids"])["mosaic_commitment_logits"].argmax(-1) - 1
