"""Branching online-learning sessions (seed 000): a base world model, sessions that learn online, forks."""

from lit_psion.sessions.store import SignatureMismatch, Store, model_signature
from lit_psion.sessions.world import Environment, WorldConfig, WorldModel

__all__ = ["Environment", "SignatureMismatch", "Store", "WorldConfig", "WorldModel", "model_signature"]
