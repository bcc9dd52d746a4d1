"""``AdapterLM``: LoRA fine-tuning of a frozen, verified DecoderLM base (seed 004's adapter lane).

The base comes from a lit_psion checkpoint: a run directory (its pointed-to checkpoint) or a
``step-NNNNNN`` directory, digest-verified before anything is loaded. The base is frozen; only the
LoRA parameters train, and :meth:`setup` checks that. Muon touches adapter matrices only when
``optimizer.name`` is ``muon`` and ``muon_on_adapters`` is set; otherwise AdamW trains them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import torch

from lit_psion.core.contracts import DataFacts, model_signature
from lit_psion.core.errors import CheckpointError, ConfigError, DataError, LitPsionError
from lit_psion.core.lock import lock_holder
from lit_psion.core.manifest import read_data_manifest
from lit_psion.models.decoder_lm import DecoderLM, refuse_sharded_muon
from lit_psion.nn.decoder import Decoder, DecoderConfig
from lit_psion.nn.lora import adapter_params, inject_lora, lora_layers
from lit_psion.nn.optim import OptimizerConfig, build_optimizer
from lit_psion.runs import load_run


def load_base(location: str | Path, unsettled_warning: bool = False) -> tuple[dict[str, Any], Path, str, str | None]:
    """The verified base checkpoint at ``location``: its state, its directory, its manifest's sha256, and the
    digest of the tokenizer its run trained with (None for a checkpoint outside a run, or a run without one).
    ``unsettled_warning``: say so when the base run is still being written or did not complete (a fine-tune)."""
    if not Path(location).exists():  # moved since: a resume may name where it is now (the digests must still hold)
        where = "" if Path(location).is_absolute() else f" (a relative path, read from {os.getcwd()!r})"
        raise CheckpointError(f"base checkpoint {str(location)!r} does not exist{where}; give the base run directory "
                              "(or its checkpoint) where it is now")  # fmt: skip
    try:
        base = load_run(location, exact=True)  # every digest verified, each file read once; no silent fallback
    except ConfigError as error:
        raise ConfigError(f"base_checkpoint {str(location)!r} is neither a run directory nor a checkpoint directory "
                          "(step-NNNNNN with manifest.json); give the base run's directory (with run.json) or one "
                          "of its checkpoints") from error  # fmt: skip  (exit 2, as every command's 'not a run')
    if base.state.get("adapter") is not None:
        raise CheckpointError(f"base_checkpoint {str(location)!r} is an adapter run (AdapterLM), not a base model; "
                              "give the DecoderLM run it adapts")
    if "decoder_config" not in base.state:
        raise CheckpointError(f"base checkpoint {str(base.checkpoint.path)!r} does not record its decoder_config; "
                              "it was not written by DecoderLM; give a DecoderLM run (a LoRA adapter adapts a "
                              "decoder's weights)")  # fmt: skip
    _check_decoder_weights(base.state, base.checkpoint.path, _family(base))
    if unsettled_warning:
        _warn_if_unsettled(base)
    return base.state, base.checkpoint.path, base.checkpoint.manifest_sha256, _base_tokenizer(base)


def _base_tokenizer(base: Any) -> str | None:
    """The digest of the tokenizer the base run trained with, from its data manifest held to the digest its checkpoint
    records (an adapter, a merged model and ``generate`` pin it): None outside a run or for a run without one."""
    recorded, path = base.checkpoint.manifest.data_manifest_digest, base.layout and base.layout.data_manifest
    if path is None or (recorded is None and not path.is_file()):
        return None
    try:
        payload, _, digest = read_data_manifest(path)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:
        why = "missing" if not path.is_file() else f"unreadable ({type(error).__name__})"
        raise DataError(f"the base run's {str(path)!r} is {why}: it records the tokenizer the base trained with; "
                        "restore it from a backup") from error  # fmt: skip
    if recorded is not None and digest != recorded:
        raise DataError(f"the base run's {str(path)!r} is not the data manifest its checkpoint "
                        f"{base.checkpoint.path.name} records (sha256 {recorded[:12]}...); restore it from a backup")
    return payload.get("tokenizer_digest")


def _warn_if_unsettled(base: Any) -> None:
    """A base run that is training now (or stopped before completing) moves on: its pointer, and retention deletes
    the checkpoint an adapter trained on, which a merge and a resume of the adapter then need."""
    if base.layout is None or base.record is None:
        return
    holder = lock_holder(base.layout.run_dir)
    if holder is None and base.record.status == "completed":
        return
    state = f"is being written by {holder.describe()}" if holder is not None else f"is {base.record.status}"
    print(f"lit_psion: warning: base run {base.layout.run_id} {state}: this fine-tune uses its "
          f"{base.checkpoint.path.name}, which its retention may delete and its pointer moves past; keep a copy "
          f"(cp -a {str(base.checkpoint.path)!r} elsewhere) to merge or resume on, or fine-tune on a finished run",
          file=sys.stderr)  # fmt: skip


def _family(base: Any) -> str | None:
    """The model class a base run trained (``MosaicLM``), from its config.yaml; None for a checkpoint outside a run."""
    if base.layout is None:
        return None
    try:
        return base.model_class().rsplit(".", 1)[-1] or None
    except LitPsionError:
        return None  # its records are checked elsewhere; the weights' own check below still holds


def _check_decoder_weights(state: dict[str, Any], path: Path, family: str | None) -> None:
    """Refuse a base whose weights are not a DecoderLM's of its recorded shape (a MosaicLM checkpoint carries its
    decoder_config and weights of its own), before any is loaded; ``family``: the model class its run names."""
    with torch.device("meta"):  # the names only: nothing allocated
        expected = set(Decoder(DecoderConfig(**state["decoder_config"])).state_dict())
    held = {key.removeprefix("model.") for key in state["state_dict"]}
    if held != expected:
        extra, missing = sorted(held - expected), sorted(expected - held)
        named = ", ".join([*(f"+{k}" for k in extra[:3]), *(f"-{k}" for k in missing[:3])])
        writer = f"a {family} run wrote it" if family else "another model wrote it"
        raise CheckpointError(f"base checkpoint {str(path)!r} does not hold a DecoderLM's weights ({named}): {writer}; "
                              "give a DecoderLM run directory (runs/<run_id>) or one of its checkpoints")  # fmt: skip


class AdapterLM(DecoderLM):
    """LoRA adapters on a frozen DecoderLM base.

    Args:
        base_checkpoint: A base run directory or checkpoint directory.
        targets: LoRA targets (``lm_head``, ``attn_qkv``, ``attn_out``, ``mlp_in``, ``mlp_out``).
        rank, alpha, lora_dropout: The adapters' shape and regularisation.
        optimizer: Optimizer and schedule for the adapter parameters.
        muon_on_adapters: With ``optimizer.name: muon``, let Muon train the adapter matrices.
        data_facts: The data's vocabulary and context (linked by the CLI), checked against the base; the
            model's shape itself always comes from the base checkpoint.
    """

    transaction_loss_is_pure = True
    """DecoderLM's loss through the adapted model: weights, batch and RNG alone (lit_psion.core.contracts)."""

    stage: ClassVar[str] = "finetune"
    signed_settings: ClassVar[tuple[str, ...]] = ("targets", "rank", "alpha")
    """With the base's digest and shape, which the base checkpoint gives (a refusal names a base that changed)."""

    def __init__(
        self,
        base_checkpoint: str,
        targets: list[str] | None = None,
        rank: int = 8,
        alpha: float = 16.0,
        lora_dropout: float = 0.0,
        optimizer: OptimizerConfig | None = None,
        muon_on_adapters: bool = False,
        data_facts: DataFacts | None = None,
    ) -> None:
        state, path, base_digest, base_tokenizer = load_base(base_checkpoint, unsettled_warning=True)
        base_config = DecoderConfig(**state["decoder_config"])
        super().__init__(base_config, optimizer)
        data = data_facts or DataFacts()
        if data.vocab_size is not None and data.vocab_size != base_config.vocab_size:
            raise ConfigError(f"the data's vocabulary ({data.vocab_size}) differs from the base model's "
                              f"({base_config.vocab_size}); use the base run's tokenizer (--data.tokenizer_file "
                              "<base run>/tokenizer.json)")  # fmt: skip
        if None not in (data.tokenizer_digest, base_tokenizer) and data.tokenizer_digest != base_tokenizer:
            raise ConfigError(f"the data's tokenizer (sha256 {data.tokenizer_digest[:12]}...) is not the one the base "
                              f"run trained with ({base_tokenizer[:12]}...): the same ids would mean other tokens; "
                              "use the base run's tokenizer (--data.tokenizer_file <base run>/tokenizer.json)")
        if data.block_size is not None and data.block_size > base_config.block_size:
            raise ConfigError(f"data.block_size {data.block_size} exceeds the base model's context "
                              f"{base_config.block_size}; use at most that")  # fmt: skip
        self.model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()})
        self.model.requires_grad_(False)
        self.targets = ["lm_head"] if targets is None else list(targets)
        self.rank, self.alpha, self.lora_dropout, self.muon_on_adapters = rank, alpha, lora_dropout, muon_on_adapters
        self.wrapped = inject_lora(self.model, self.targets, rank, alpha, lora_dropout)
        self.base_path, self.base_digest = path, base_digest
        self.base_signature = state.get("model_signature")

    @property
    def model_signature(self) -> str:
        return model_signature("AdapterLM", base=self.base_digest, decoder=dataclasses.asdict(self.decoder_config),
                               targets=self.targets, rank=self.rank, alpha=self.alpha)  # fmt: skip

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
            if not getattr(self, "_said_adamw", False) and (self._trainer is None or self.trainer.is_global_zero):
                self._said_adamw = True  # (a resume asks for the optimizer again, to honour its settings)
                print("lit_psion: note: optimizer.name is muon, but AdamW trains an AdapterLM's adapters unless "
                      "--model.init_args.muon_on_adapters true", file=sys.stderr)  # fmt: skip
        elif self.muon_on_adapters and config.name != "muon" and not getattr(self, "_said_adamw", False) and (
                self._trainer is None or self.trainer.is_global_zero):  # fmt: skip
            self._said_adamw = True
            print(f"lit_psion: note: muon_on_adapters is set, but optimizer.name is {config.name}, which trains the "
                  "adapters; give --model.init_args.optimizer.name muon for Muon", file=sys.stderr)  # fmt: skip
        refuse_sharded_muon(self, config)
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
