"""``EventEnvelope``: the one shape every event has, MOSAIC's external interface (seed 003).

An event is a JSON object: ``id``, ``type``, ``sender``, ``payload`` (a JSON object), ``seq`` (its
position in the stream) and ``time`` (seconds), plus the commitment lifecycle meta-fields
``commitment_delta`` (+1 opens a commitment, -1 closes it, 0 is neutral) and ``commitment_id``
(links an open to its close; left out of the JSON when None).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from lit_psion.core.errors import DataError

EVENT_TYPES = ("Message", "ToolCall", "ToolResult", "MemoryWrite", "MemoryRead", "Sleep")
COMMITMENT_DELTAS = (-1, 0, 1)
FIELDS = ("id", "type", "sender", "payload", "seq", "time", "commitment_delta", "commitment_id")


class EventError(DataError):
    """An event that does not match the envelope schema (names the field and the fix)."""

    failure_class = "event_invalid"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EventEnvelope:
    id: str
    type: str
    sender: str
    payload: dict[str, Any]
    seq: int
    time: float = 0.0
    commitment_delta: int = 0
    commitment_id: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    def to_json_dict(self) -> dict[str, Any]:
        record = {
            "id": self.id, "type": self.type, "sender": self.sender, "payload": self.payload, "seq": self.seq,
            "time": self.time, "commitment_delta": self.commitment_delta,
        }  # fmt: skip
        if self.commitment_id is not None:
            record["commitment_id"] = self.commitment_id
        return record

    @classmethod
    def from_json_dict(cls, record: Any) -> EventEnvelope:
        """Parse and validate one event; raises EventError naming the first bad field."""
        if not isinstance(record, dict):
            raise EventError(f"an event must be a JSON object, got {type(record).__name__}")
        if unknown := sorted(set(record) - set(FIELDS)):
            raise EventError(f"event field {unknown[0]!r} is not part of the envelope (fields: {', '.join(FIELDS)})")
        for name in ("id", "type", "sender", "payload", "seq"):
            if name not in record:
                raise EventError(f"event {record.get('id', '?')!r} has no {name!r}")
        time = record.get("time", 0.0)
        if isinstance(time, int) and not isinstance(time, bool):
            time = float(time)
        return cls(
            id=record["id"], type=record["type"], sender=record["sender"], payload=record["payload"],
            seq=record["seq"], time=time, commitment_delta=record.get("commitment_delta", 0),
            commitment_id=record.get("commitment_id"),
        )  # fmt: skip


def _validate(event: EventEnvelope) -> None:
    where = f"event {event.id!r}" if isinstance(event.id, str) else "event"
    for name in ("id", "sender"):
        value = getattr(event, name)
        if not isinstance(value, str) or not value:
            raise EventError(f"{where}: {name!r} must be a non-empty string, got {value!r}")
    if event.type not in EVENT_TYPES:
        raise EventError(f"{where}: unknown type {event.type!r} (types: {', '.join(EVENT_TYPES)})")
    if not isinstance(event.payload, dict):
        raise EventError(f"{where}: 'payload' must be a JSON object, got {type(event.payload).__name__}")
    try:
        json.dumps(event.payload, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise EventError(f"{where}: 'payload' is not plain JSON ({error})") from error
    except RecursionError as error:  # (parsed just under the reader's limit, deeper to write back)
        raise EventError(f"{where}: 'payload' is nested too deeply to read; give a flatter payload") from error
    try:  # a lone surrogate ("\\ud800") parses as JSON but is no text: it cannot be encoded, nor tokenized
        strings = [event.id, event.type, event.sender, event.payload, event.commitment_id]
        json.dumps(strings, ensure_ascii=False).encode()
    except RecursionError as error:
        raise EventError(f"{where}: 'payload' is nested too deeply to read; give a flatter payload") from error
    except UnicodeEncodeError as error:
        raise EventError(f"{where}: holds a string that is not valid Unicode ({error.reason}: "
                         f"{error.object[error.start:error.end]!r}); give UTF-8 text") from error  # fmt: skip
    if not isinstance(event.seq, int) or isinstance(event.seq, bool) or event.seq < 0:
        raise EventError(f"{where}: 'seq' must be an integer >= 0, got {event.seq!r}")
    if not isinstance(event.time, float) or not math.isfinite(event.time):
        raise EventError(f"{where}: 'time' must be a finite number of seconds, got {event.time!r}")
    delta = event.commitment_delta
    if type(delta) is not int or delta not in COMMITMENT_DELTAS:  # not bool, not 1.0
        raise EventError(f"{where}: 'commitment_delta' must be -1 (close), 0 or +1 (open), got {delta!r}")
    if event.commitment_id is not None and (not isinstance(event.commitment_id, str) or not event.commitment_id):
        raise EventError(f"{where}: 'commitment_id' must be a non-empty string or absent, got {event.commitment_id!r}")
    if delta != 0 and event.commitment_id is None:
        raise EventError(f"{where}: a commitment_delta of {delta:+d} needs a 'commitment_id' linking open and close")
