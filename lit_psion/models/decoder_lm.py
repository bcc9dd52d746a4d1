"""``DecoderLM``: next-token training of :class:`lit_psion.nn.Decoder`."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from lit_psion.core.contracts import DataFacts, model_signature
from lit_psion.core.errors import CheckpointError, ConfigError
from lit_psion.core.step_logs import keep_step_logs, log_kept_step_logs, writes_the_step_row
from lit_psion.models.base import LitModule
from lit_psion.nn.decoder import Decoder, DecoderConfig
from lit_psion.nn.optim import OptimizerConfig, build_optimizer, finite_steps, warmup_cosine


def shaped_by_data(config: DecoderConfig, facts: DataFacts | None) -> DecoderConfig:
    """``config`` with the vocabulary and context the data has (the data decides them, not the preset)."""
    if facts is None:
        return config
    changes = {"vocab_size": facts.vocab_size, "block_size": facts.block_size}
    return dataclasses.replace(config, **{key: value for key, value in changes.items() if value is not None})


def refuse_shape_the_data_overrode(given: DecoderConfig, shaped: DecoderConfig) -> None:
    """A ``vocab_size`` or ``block_size`` given for the decoder (not the default) that the data replaced: the
    model is shaped by the data, so the setting would have done nothing while config.yaml recorded it."""
    default = DecoderConfig()
    for name, where in (("vocab_size", "its tokenizer's vocabulary; --data.vocab_size sets a BPE tokenizer's"),
                        ("block_size", "--data.block_size")):  # fmt: skip
        value = getattr(given, name)
        if value != getattr(default, name) and value != getattr(shaped, name):
            raise ConfigError(f"decoder.{name} {value} is not the data's ({getattr(shaped, name)}): the data decides "
                              f"it ({where}); drop --model.init_args.decoder.{name}, or set it on the data")


def refuse_sharded_muon(module: L.LightningModule, config: OptimizerConfig) -> None:
    """Muon orthogonalises whole matrices; under FSDP each rank holds a slice of each, so it is refused."""
    if config.name == "muon" and module.device_mesh is not None:
        raise ConfigError("optimizer muon needs whole weight matrices, but the sharded strategy gives each rank a "
                          "slice of them; use --model.init_args.optimizer.name adamw (configs/overlays/fsdp.yaml "
                          "does), or train a new run under --trainer.strategy ddp to keep Muon")  # fmt: skip


class DecoderLM(LitModule):
    """A compact decoder LM trained on next-token cross-entropy.

    Args:
        decoder: Shape of the decoder. ``vocab_size`` and ``block_size`` come from ``data_facts`` when given.
        optimizer: Optimizer (``adamw`` or ``muon``) and warmup + cosine schedule.
        data_facts: The data's vocabulary and context (``python -m lit_psion`` links them from the DataModule).
    """

    stage: ClassVar[str] = "pretrain"
    lr_flag: ClassVar[str] = "--model.init_args.optimizer.lr"
    """The command-line flag of the learning rate, for advice (a divergence names it)."""
    signed_settings: ClassVar[tuple[str, ...]] = ("decoder",)
    """The settings :attr:`model_signature` is made of (with the data's vocabulary and context)."""

    def __init__(self, decoder: DecoderConfig | None = None, optimizer: OptimizerConfig | None = None,
                 data_facts: DataFacts | None = None) -> None:  # fmt: skip
        super().__init__()
        self._given_decoder = decoder or DecoderConfig()
        self.decoder_config = shaped_by_data(self._given_decoder, data_facts)
        self.optimizer_config = optimizer or OptimizerConfig()
        self.model = Decoder(self.decoder_config)
        self.val_loss = MeanMetric()
        self.val_perplexity = Perplexity()

    @property
    def model_signature(self) -> str:
        """sha256 of the canonical model config (SPEC §3; no base checkpoint for a from-scratch model)."""
        return model_signature("DecoderLM", decoder=dataclasses.asdict(self.decoder_config))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **kwargs: Any) -> torch.Tensor:
        return self.model.generate(input_ids, max_new_tokens, **kwargs)

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(batch["input_ids"])  # (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())
        return loss, logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        keep_step_logs(self, **{"train/loss": loss})  # logged in on_train_batch_end, on the steps that write a row
        return loss

    transaction_loss_is_pure = True
    """The loss is a function of the weights, the batch and the RNG state (lit_psion.core.contracts)."""

    def transaction_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss on ``batch`` without logging (what a transactional strategy measures)."""
        return self._loss(batch)[0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._loss(batch)
        self.val_loss.update(loss, weight=batch["targets"].numel())
        self.val_perplexity.update(logits, batch["targets"])
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/perplexity", self.val_perplexity)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, _ = self._loss(batch)
        self.log("test/loss", loss, batch_size=batch["targets"].numel())  # per token, as val/loss

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model(batch["input_ids"]).argmax(dim=-1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain data (loadable with weights_only=True): what an adapter needs to rebuild this model.
        checkpoint["decoder_config"] = dataclasses.asdict(self.decoder_config)
        checkpoint["model_signature"] = self.model_signature
        checkpoint["optimizer_name"] = self.optimizer_config.name

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Before Lightning loads the optimizer state: another optimizer's state would fail deep inside torch.
        recorded = checkpoint.get("optimizer_name")
        if self._trainer is not None and checkpoint.get("optimizer_states") and recorded not in (
                None, self.optimizer_config.name):  # fmt: skip
            raise CheckpointError(f"the checkpoint holds the state of optimizer {recorded!r}, this config builds "
                                  f"{self.optimizer_config.name!r}; resume with --model.init_args.optimizer.name "
                                  f"{recorded}")

    def setup(self, stage: str) -> None:
        if stage == "fit":  # not when a recorded run is read back: its config.yaml may predate this check
            refuse_shape_the_data_overrode(self._given_decoder, self.decoder_config)

    def configure_model(self) -> None:
        """Under the sharded strategy (a device mesh), shard the model per block with FSDP2; otherwise nothing."""
        if self.device_mesh is None:
            return
        from lit_psion.nn.sharding import shard_per_block

        options = getattr(self.trainer.strategy, "sharding_options", dict)()
        shard_per_block(self.model, self.model.blocks, self.device_mesh, **options)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        keep_step_logs(self, **{"train/lr": optimizer.param_groups[0]["lr"]})

    flushes_step_logs: ClassVar[bool] = True
    """Its ``on_train_batch_end`` writes the step's kept scalars as one row (lit_psion.core.step_logs): callbacks
    and strategies keep theirs for it. A subclass overriding ``on_train_batch_end`` calls ``super()``'s."""

    @writes_the_step_row
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        log_kept_step_logs(self)

    def configure_optimizers(self) -> dict[str, Any]:
        config = self.optimizer_config
        refuse_sharded_muon(self, config)
        return self._with_schedule(build_optimizer(config, self.model, self.model.hidden_matrices()))

    def _with_schedule(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``optimizer`` with the configured warmup + cosine schedule, stepped every optimizer step."""
        config = self.optimizer_config
        decay_steps = config.decay_steps or finite_steps(self.trainer.estimated_stepping_batches)
        schedule = warmup_cosine(config.warmup_steps, decay_steps, config.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
