"""Replay-safe DataModules (imported as ``lit_psion.datamodules``).

The classes are imported when first named (``lit_psion.datamodules.CorpusDataModule``), so a command that
only reads a token cache (``doctor``, through :mod:`lit_psion.datamodules.token_cache`) does not import
Lightning with the package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CorpusDataModule": "lit_psion.datamodules.corpus",
    "Cursor": "lit_psion.datamodules.replay",
    "DataConfigError": "lit_psion.core.errors",
    "DataManifestMismatch": "lit_psion.core.errors",
    "DynamicsDataModule": "lit_psion.datamodules.dynamics",
    "EventTraceDataModule": "lit_psion.datamodules.event_traces",
    "ReplayBatchSampler": "lit_psion.datamodules.replay",
    "ReplayDataLoader": "lit_psion.datamodules.replay",
    "ReplayDataModule": "lit_psion.datamodules.base",
    "ReplaySampler": "lit_psion.datamodules.replay",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lit_psion.datamodules' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
