"""A lossless codec between event sequences and token ids.

Each event becomes ``EVENT_START``, the UTF-8 bytes of its canonical JSON (bytes are ids 0-255),
``EVENT_END``. Canonical JSON (sorted keys, floats as Python repr) makes the encoding unique and
``decode(encode(events)) == events`` exact. :meth:`EventCodec.encode_spans` also returns, for
each event, the token range of its payload's ``text`` value, which the trace builder supervises.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from lit_psion.core import canonical_json
from lit_psion.events.envelope import EventEnvelope, EventError

PAD, EVENT_START, EVENT_END = 256, 257, 258
VOCAB_SIZE = 259
"""Ids the codec uses (a model's vocabulary may be larger)."""


class EventCodec:
    vocab_size = VOCAB_SIZE

    def encode(self, events: Sequence[EventEnvelope]) -> list[int]:
        return self.encode_spans(events)[0]

    def encode_spans(self, events: Sequence[EventEnvelope]) -> tuple[list[int], list[tuple[int, int, int, int]]]:
        """Token ids, and per event (start, end, text_start, text_end): its whole span and its text span.

        The text span is empty (text_start == text_end) when the payload has no string ``text``.
        """
        ids: list[int] = []
        spans = []
        for event in events:
            body = canonical_json(event.to_json_dict())
            start = len(ids)
            ids.append(EVENT_START)
            ids.extend(body)
            ids.append(EVENT_END)
            text_start = text_end = start + 1
            text = event.payload.get("text")
            if isinstance(text, str) and text:
                needle = b'"text":' + canonical_json(text)
                offset = body.find(needle)
                if offset >= 0:
                    text_start = start + 1 + offset + len(b'"text":"')
                    text_end = text_start + len(canonical_json(text)) - 2
            spans.append((start, len(ids), text_start, text_end))
        return ids, spans

    def decode(self, ids: Sequence[int]) -> list[EventEnvelope]:
        """Events from token ids; raises EventError on a malformed stream."""
        events, current = [], None
        for position, token in enumerate(ids):
            if token == EVENT_START:
                if current is not None:
                    raise EventError(f"token {position}: an event starts before the previous one ended")
                current = bytearray()
            elif token == EVENT_END:
                if current is None:
                    raise EventError(f"token {position}: an event ends that never started")
                try:
                    record = json.loads(current.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise EventError(f"token {position}: the event's bytes are not JSON ({error})") from error
                events.append(EventEnvelope.from_json_dict(record))
                current = None
            elif token == PAD:
                continue
            elif 0 <= token < 256 and current is not None:
                current.append(token)
            else:
                raise EventError(f"token {position}: id {token} is outside an event or not a codec id")
        if current is not None:
            raise EventError("the token stream ends inside an event")
        return events
