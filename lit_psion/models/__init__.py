"""LightningModules: thin wrappers owning steps, metrics and optimizers."""

from lit_psion.models.adapter_lm import AdapterLM
from lit_psion.models.decoder_lm import DecoderLM
from lit_psion.models.graph_core import GraphCore
from lit_psion.models.mosaic_lm import MosaicLM

__all__ = ["AdapterLM", "DecoderLM", "GraphCore", "MosaicLM"]
