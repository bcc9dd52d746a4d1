"""``AdapterLM``: LoRA fine-tuning of a frozen, verified DecoderLM base (seed 004's adapter lane).

The base comes from a lit_psion checkpoint: a run directory (its pointed-to checkpoint) or a
``step-NNNNNN`` directory, digest-verified before anything is loaded. The base is frozen; only the
LoRA parameters train, and :meth:`setup` checks that. Muon touches adapter matrices only when
``optimizer.name`` is ``muon`` and ``muon_on_adapters`` is set; otherwise AdamW trains them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from lit_psion.core import sha256_json
from lit_psion.core.errors import CheckpointError, ConfigError
from lit_psion.models.decoder_lm import DecoderLM
from lit_psion.nn.decoder import DecoderConfig
from lit_psion.nn.lora import adapter_params, inject_lora, lora_layers
from lit_psion.nn.optim import OptimizerConfig, build_optimizer


def load_base(location: str | Path) -> tuple[dict[str, Any], Path, str]:
    """The verified base checkpoint at ``location``: its state, its directory, its manifest's sha256."""
    from lit_psion.callbacks.checkpoint import resolve_checkpoint
    from lit_psion.callbacks.checkpoint_io import MANIFEST, ManifestCheckpointIO
    from lit_psion.core import sha256_file

    path = Path(location)
    if (path / "run.json").is_file():
        path = resolve_checkpoint(path)
    elif not (path / MANIFEST).is_file():
        raise CheckpointError(f"base_checkpoint {str(location)!r} is neither a run directory nor a checkpoint "
                              "directory (step-NNNNNN with manifest.json)")  # fmt: skip
    state = ManifestCheckpointIO().load_checkpoint(path)  # verifies every digest first
    if "decoder_config" not in state:
        raise CheckpointError(f"base checkpoint {str(path)!r} does not record its decoder_config; "
                              "it was not written by DecoderLM")  # fmt: skip
    return state, path, sha256_file(path / MANIFEST)


class AdapterLM(DecoderLM):
    """LoRA adapters on a frozen DecoderLM base.

    Args:
        base_checkpoint: A base run directory or checkpoint directory.
        targets: LoRA targets (``lm_head``, ``attn_qkv``, ``attn_out``, ``mlp_in``, ``mlp_out``).
        rank, alpha, lora_dropout: The adapters' shape and regularisation.
        optimizer: Optimizer and schedule for the adapter parameters.
        muon_on_adapters: With ``optimizer.name: muon``, let Muon train the adapter matrices.
        decoder: Give it as ``decoder: {}``: the CLI fills in the data's vocab and block size, which are
            checked against the base; the model's shape itself always comes from the base checkpoint.
    """

    def __init__(
        self,
        base_checkpoint: str,
        targets: list[str] | None = None,
        rank: int = 8,
        alpha: float = 16.0,
        lora_dropout: float = 0.0,
        optimizer: OptimizerConfig | None = None,
        muon_on_adapters: bool = False,
        decoder: DecoderConfig | None = None,
    ) -> None:
        state, path, base_digest = load_base(base_checkpoint)
        base_config = DecoderConfig(**state["decoder_config"])
        super().__init__(base_config, optimizer)
        if decoder is not None and decoder.vocab_size != base_config.vocab_size:
            raise ConfigError(f"the data's vocabulary ({decoder.vocab_size}) differs from the base model's "
                              f"({base_config.vocab_size}); use the base run's tokenizer (--data.tokenizer_file "
                              "<base run>/tokenizer.json)")  # fmt: skip
        if decoder is not None and decoder.block_size > base_config.block_size:
            raise ConfigError(f"data.block_size {decoder.block_size} exceeds the base model's context "
                              f"{base_config.block_size}; use at most that")  # fmt: skip
        self.model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()})
        self.model.requires_grad_(False)
        self.targets = list(targets or ["lm_head"])
        self.rank, self.alpha, self.lora_dropout, self.muon_on_adapters = rank, alpha, lora_dropout, muon_on_adapters
        self.wrapped = inject_lora(self.model, self.targets, rank, alpha, lora_dropout)
        self.base_path, self.base_digest = path, base_digest
        self.base_signature = state.get("model_signature")

    @property
    def model_signature(self) -> str:
        return sha256_json({"family": "AdapterLM", "decoder": dataclasses.asdict(self.decoder_config),
                            "base": self.base_digest, "targets": self.targets, "rank": self.rank,
                            "alpha": self.alpha})  # fmt: skip

    def adapter_params(self) -> list[torch.nn.Parameter]:
        return adapter_params(self.model)

    def setup(self, stage: str) -> None:
        trainable = {id(p) for p in self.parameters() if p.requires_grad}
        adapters = {id(p) for p in self.adapter_params()}
        if trainable != adapters:
            raise ConfigError(f"AdapterLM must train adapter parameters only: {len(trainable - adapters)} other "
                              "trainable tensors found")  # fmt: skip

    def configure_optimizers(self) -> dict[str, Any]:
        config = self.optimizer_config
        hidden = self.adapter_params() if config.name == "muon" and self.muon_on_adapters else []
        if config.name == "muon" and not hidden:
            config = dataclasses.replace(config, name="adamw")  # never Muon by accident through a "2-D" rule
        optimizer = build_optimizer(config, self.model, hidden)
        return self._with_schedule(optimizer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["adapter"] = {"base_checkpoint_digest": self.base_digest, "targets": self.targets,
                                 "rank": self.rank, "alpha": self.alpha, "wrapped": self.wrapped}  # fmt: skip

    @torch.no_grad()
    def held_out_loss(self, loader: Any, adapters: bool) -> float:
        """Mean loss over ``loader`` with the adapters on, or off (the base model)."""
        layers = lora_layers(self.model)
        saved, was_training = [layer.scaling for layer in layers], self.training
        if not adapters:
            for layer in layers:
                layer.scaling = 0.0
        self.eval()  # no dropout: base and candidate are scored on the same function of the same data
        try:
            losses = [float(self._loss({k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                                        for k, v in batch.items()})[0]) for batch in loader]  # fmt: skip
        finally:
            self.train(was_training)
            for layer, scaling in zip(layers, saved, strict=True):
                layer.scaling = scaling
        return sum(losses) / max(1, len(losses))
