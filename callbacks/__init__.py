"""Callbacks, one concern each (imported as ``lit_psion.callbacks``)."""

from lit_psion.callbacks.checkpoint import PointerCheckpoint
from lit_psion.callbacks.dashboard import Dashboard
from lit_psion.callbacks.evidence import EvidenceCallback, Receipts
from lit_psion.callbacks.growth import GrowthPlanner
from lit_psion.callbacks.prediction import PredictionWriter
from lit_psion.callbacks.progress import ProgressBar
from lit_psion.callbacks.promotion import PromotionGate
from lit_psion.callbacks.run_dir import RunDirectory
from lit_psion.callbacks.sample import GenerateSample
from lit_psion.callbacks.stop import InterruptAtBoundary, StopAgreement
from lit_psion.callbacks.telemetry import Telemetry

__all__ = [
    "Dashboard",
    "EvidenceCallback",
    "GenerateSample",
    "GrowthPlanner",
    "InterruptAtBoundary",
    "PointerCheckpoint",
    "PredictionWriter",
    "ProgressBar",
    "PromotionGate",
    "Receipts",
    "RunDirectory",
    "StopAgreement",
    "Telemetry",
]
