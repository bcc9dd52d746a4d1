"""LightningModules: thin wrappers owning steps, metrics and optimizers."""

from lit_psion.models.decoder_lm import DecoderLM

__all__ = ["DecoderLM"]
