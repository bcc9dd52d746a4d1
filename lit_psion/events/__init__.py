"""Events: MOSAIC's external interface (seed 003): the envelope and its lossless token codec."""

from lit_psion.events.codec import EVENT_END, EVENT_START, PAD, EventCodec
from lit_psion.events.envelope import EVENT_TYPES, EventEnvelope, EventError

__all__ = ["EVENT_END", "EVENT_START", "EVENT_TYPES", "PAD", "EventCodec", "EventEnvelope", "EventError"]
