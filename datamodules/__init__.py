"""Replay-safe DataModules (imported as ``lit_psion.datamodules``)."""

from lit_psion.core.errors import DataConfigError, DataManifestMismatch
from lit_psion.datamodules.base import ReplayDataModule
from lit_psion.datamodules.corpus import CorpusDataModule
from lit_psion.datamodules.dynamics import DynamicsDataModule
from lit_psion.datamodules.event_traces import EventTraceDataModule
from lit_psion.datamodules.replay import Cursor, ReplayBatchSampler, ReplayDataLoader, ReplaySampler

__all__ = [
    "CorpusDataModule",
    "Cursor",
    "DataConfigError",
    "DataManifestMismatch",
    "DynamicsDataModule",
    "EventTraceDataModule",
    "ReplayBatchSampler",
    "ReplayDataLoader",
    "ReplayDataModule",
    "ReplaySampler",
]
