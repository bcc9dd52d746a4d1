"""lit_psion: a Lightning-structured trainer where every training step is accountable."""

__version__ = "0.1.0"
