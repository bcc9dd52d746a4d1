"""A lossless codec between event sequences and token ids.

Each event becomes ``EVENT_START``, the UTF-8 bytes of its canonical JSON (bytes are ids 0-255),
``EVENT_END``. Canonical JSON (sorted keys, floats as Python repr) makes the encoding unique and
``decode(encode(events)) == events`` exact. :meth:`EventCodec.encode_spans` also returns, for
each event, the token range of its payload's ``text`` value (or another string field), which the
trace builder supervises.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lit_psion.core import canonical_json
from lit_psion.events.envelope import EventEnvelope, EventError

PAD, EVENT_START, EVENT_END = 256, 257, 258
VOCAB_SIZE = 259
"""Ids the codec uses (a model's vocabulary may be larger)."""


class EventCodec:
    vocab_size = VOCAB_SIZE

    def encode(self, events: Sequence[EventEnvelope]) -> list[int]:
        return self.encode_spans(events)[0]

    def encode_spans(
        self, events: Sequence[EventEnvelope], field: str = "text"
    ) -> tuple[list[int], list[tuple[int, int, int, int]]]:
        """Token ids, and per event (start, end, text_start, text_end): its whole span and its text span.

        The text span is that of the payload's ``field`` (default ``text``); empty (text_start ==
        text_end) when the payload has no such non-empty string.
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
            text = event.payload.get(field)
            if isinstance(text, str) and text:
                needle = canonical_json(field) + b":" + canonical_json(text)
                offset = body.find(needle)
                if offset >= 0:
                    text_start = start + 1 + offset + len(needle) - len(canonical_json(text)) + 1
                    text_end = text_start + len(canonical_json(text)) - 2
            spans.append((start, len(ids), text_start, text_end))
        return ids, spans

    def decode(self, ids: Sequence[int]) -> list[EventEnvelope]:
        """Events from token ids; raises EventError on a malformed stream."""

        def body(tokens: list[int]) -> str:
            if any(not 0 <= t < 256 for t in tokens):
                raise EventError(f"ids {sorted(set(t for t in tokens if not 0 <= t < 256))[:3]} are not codec bytes")
            return bytes(tokens).decode("utf-8")

        return decode_frames(ids, EVENT_START, EVENT_END, PAD, body)


EVENT_OPEN, EVENT_CLOSE, PAD_TOKEN = "<|event|>", "<|/event|>", "<|pad|>"


class BpeEventCodec:
    """The same event framing over a byte-level BPE trained on event JSON (lossless, about 6x shorter).

    Args:
        tokenizer: a byte-level BPE ``tokenizers.Tokenizer`` (see :func:`train_event_tokenizer`).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        tokenizer.encode_special_tokens = True  # "<|event|>" inside a payload's text is text, not framing
        self.event_start = tokenizer.token_to_id(EVENT_OPEN)
        self.event_end = tokenizer.token_to_id(EVENT_CLOSE)
        self.pad = tokenizer.token_to_id(PAD_TOKEN)
        if None in (self.event_start, self.event_end, self.pad):
            raise EventError("the event tokenizer lacks its framing tokens; train it with train_event_tokenizer")
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, events: Sequence[EventEnvelope]) -> list[int]:
        return self.encode_spans(events)[0]

    def encode_spans(
        self, events: Sequence[EventEnvelope], field: str = "text"
    ) -> tuple[list[int], list[tuple[int, int, int, int]]]:
        """Token ids, and per event (start, end, text_start, text_end), as :meth:`EventCodec.encode_spans`.

        The text span covers every token that overlaps the payload's ``field`` value (default ``text``).
        """
        ids: list[int] = []
        spans = []
        for event in events:
            body = canonical_json(event.to_json_dict()).decode()
            encoding = self.tokenizer.encode(body, add_special_tokens=False)
            start = len(ids)
            ids.append(self.event_start)
            ids.extend(encoding.ids)
            ids.append(self.event_end)
            text_start = text_end = start + 1
            text = event.payload.get(field)
            if isinstance(text, str) and text:
                quoted = canonical_json(text).decode()
                name = canonical_json(field).decode() + ":"
                offset = body.find(name + quoted)
                if offset >= 0:
                    lo = offset + len(name) + 1
                    hi = lo + len(quoted) - 2
                    inside = [i for i, (a, b) in enumerate(encoding.offsets) if a < hi and b > lo]
                    if inside:
                        text_start, text_end = start + 1 + inside[0], start + 2 + inside[-1]
            spans.append((start, len(ids), text_start, text_end))
        return ids, spans

    def decode(self, ids: Sequence[int]) -> list[EventEnvelope]:
        body = lambda tokens: self.tokenizer.decode(tokens, skip_special_tokens=False)  # noqa: E731
        return decode_frames(ids, self.event_start, self.event_end, self.pad, body)


def train_event_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE over event JSON, with the event framing and padding tokens added.

    Merges stay inside a JSON string or inside the punctuation and numbers between strings, so a
    token never spans a field name and its value: a payload's text keeps its own tokens.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r'"(?:[^"\\]|\\.)*"'), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[EVENT_OPEN, EVENT_CLOSE, PAD_TOKEN], show_progress=False)  # fmt: skip
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def decode_frames(ids: Sequence[int], start: int, end: int, pad: int, body: Any) -> list[EventEnvelope]:
    """Split ``ids`` at the framing tokens, turn each frame into JSON text with ``body``, parse and validate it."""
    events: list[EventEnvelope] = []
    current: list[int] | None = None
    for position, token in enumerate(ids):
        if token == start:
            if current is not None:
                raise EventError(f"token {position}: an event starts before the previous one ended")
            current = []
        elif token == end:
            if current is None:
                raise EventError(f"token {position}: an event ends that never started")
            try:
                record = json.loads(body(current))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise EventError(f"token {position}: the event is not JSON ({error})") from error
            events.append(EventEnvelope.from_json_dict(record))
            current = None
        elif token == pad:
            continue
        elif current is not None:
            current.append(token)
        else:
            raise EventError(f"token {position}: id {token} is outside an event")
    if current is not None:
        raise EventError("the token stream ends inside an event")
    return events
