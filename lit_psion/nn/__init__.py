"""Plain torch building blocks. No Lightning here."""

from lit_psion.nn.decoder import Decoder, DecoderConfig

__all__ = ["Decoder", "DecoderConfig"]
