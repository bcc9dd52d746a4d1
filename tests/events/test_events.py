"""The event envelope's validation table and the codec's lossless round trip."""

from __future__ import annotations

import json

import pytest

from lit_psion.events import EVENT_START, EventCodec, EventEnvelope, EventError

GOOD = {"id": "e1", "type": "Message", "sender": "agent", "payload": {"text": "I will look"}, "seq": 0}


def test_to_json_dict_omits_commitment_id_when_none() -> None:
    event = EventEnvelope.from_json_dict(GOOD)
    assert "commitment_id" not in event.to_json_dict()
    opened = EventEnvelope.from_json_dict({**GOOD, "commitment_delta": 1, "commitment_id": "c1"})
    assert opened.to_json_dict()["commitment_id"] == "c1"
    assert EventEnvelope.from_json_dict(opened.to_json_dict()) == opened


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"commitment_delta": 2}, "commitment_delta"),
        ({"commitment_delta": True, "commitment_id": "c"}, "commitment_delta"),
        ({"commitment_delta": 1.0, "commitment_id": "c"}, "commitment_delta"),
        ({"commitment_delta": 1.0}, "commitment_delta"),
        ({"commitment_delta": 1}, "commitment_id"),  # an open without an id cannot be closed
        ({"commitment_id": ""}, "commitment_id"),
        ({"payload": ["not", "an", "object"]}, "payload"),
        ({"payload": {"x": float("nan")}}, "payload"),
        ({"type": "Telepathy"}, "type"),
        ({"id": ""}, "id"),
        ({"sender": 3}, "sender"),
        ({"seq": -1}, "seq"),
        ({"seq": 1.5}, "seq"),
        ({"time": "noon"}, "time"),
        ({"colour": "red"}, "colour"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_bad_events_are_refused_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(EventError, match=field):
        EventEnvelope.from_json_dict({**GOOD, **change})


@pytest.mark.parametrize("missing", ["id", "type", "sender", "payload", "seq"])
def test_a_missing_field_is_named(missing: str) -> None:
    with pytest.raises(EventError, match=missing):
        EventEnvelope.from_json_dict({k: v for k, v in GOOD.items() if k != missing})


def test_good_variants_parse() -> None:
    for change in ({"time": 3}, {"time": 1.25}, {"commitment_delta": -1, "commitment_id": "c"}, {"payload": {}}):
        EventEnvelope.from_json_dict({**GOOD, **change})


def test_codec_round_trip_is_lossless_and_spans_cover_the_text() -> None:
    events = [
        EventEnvelope(id="a", type="Message", sender="user", payload={"text": 'find "notes" ü'}, seq=0, time=0.1),
        EventEnvelope(
            id="b",
            type="Message",
            sender="agent",
            payload={"text": "I will look"},
            seq=1,
            commitment_delta=1,
            commitment_id="c0",
        ),
        EventEnvelope(id="c", type="ToolCall", sender="agent", payload={"tool": "grep", "args": [1, 2.5, None]}, seq=2),
        EventEnvelope(
            id="d",
            type="Message",
            sender="agent",
            payload={"text": "Here is it"},
            seq=3,
            commitment_delta=-1,
            commitment_id="c0",
        ),
    ]
    codec = EventCodec()
    ids, spans = codec.encode_spans(events)
    assert codec.decode(ids) == events
    assert ids[0] == EVENT_START and max(ids) < codec.vocab_size
    for event, (start, end, text_start, text_end) in zip(events, spans, strict=True):
        text = event.payload.get("text")
        covered = bytes(ids[text_start:text_end]).decode()
        assert covered == (json.dumps(text, ensure_ascii=False)[1:-1] if text else "")
        assert start < end and start <= text_start <= text_end <= end


@pytest.mark.parametrize("ids", [[EVENT_START, 123], [123], [EVENT_START, *b"{}", 258]])
def test_malformed_token_streams_are_refused(ids: list[int]) -> None:
    with pytest.raises(EventError):
        EventCodec().decode(ids)


def test_traces_are_deterministic_and_their_lifecycle_is_consistent() -> None:
    from lit_psion.events.traces import READ_MEM, WRITE_MEM, TraceSettings, generate_trace

    settings = TraceSettings()
    trace = generate_trace(settings, seed=0, split="train", index=5)
    assert trace == generate_trace(settings, seed=0, split="train", index=5)
    assert trace != generate_trace(settings, seed=0, split="val", index=5)
    events = [s.event for s in trace]
    assert EventCodec().decode(EventCodec().encode(events)) == events
    opened = {e.commitment_id: e for e in events if e.commitment_delta == 1}
    closed = {e.commitment_id: e for e in events if e.commitment_delta == -1}
    assert len(opened) == settings.negotiation_pairs and opened.keys() == closed.keys()
    assert all(opened[c].seq < closed[c].seq and opened[c].payload["text"].startswith("I will") for c in opened)
    writes = {s.event.payload["key"]: s.event.payload["value"] for s in trace if s.opcode == WRITE_MEM}
    reads = [s.event.payload for s in trace if s.opcode == READ_MEM]
    assert len(reads) == settings.n_pairs and all(writes[r["key"]] == r["value"] for r in reads)


def test_the_bpe_codec_keeps_framing_tokens_inside_text_as_text() -> None:
    from lit_psion.events.codec import BpeEventCodec, train_event_tokenizer

    tricky = [EventEnvelope(id="x", type="Message", sender="u", seq=0,
                            payload={"text": "see <|pad|> and <|event|> or <|/event|> here"})]  # fmt: skip
    texts = [json.dumps(e.to_json_dict()) for e in tricky] * 20
    codec = BpeEventCodec(train_event_tokenizer(texts, 400))
    assert codec.decode(codec.encode(tricky)) == tricky
