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


def test_default_traces_and_their_pinned_settings_are_unchanged() -> None:
    """The memory-ablation knobs are off by default: traces, tokenizer keys and manifests keep their digests."""
    from lit_psion.core import sha256_json
    from lit_psion.events.traces import TraceSettings, generate_trace

    trace = generate_trace(TraceSettings(), seed=0, split="train", index=5)
    digest = sha256_json([s.event.to_json_dict() for s in trace])
    assert digest == "70a6b05c21865df613a7bf2c56ab08d03f282b06fb7e39a972d356e4b5a485cb"  # generated before the knobs
    assert TraceSettings().pinned() == {"n_pairs": 3, "distractor_events": 4, "negotiation_pairs": 2,
                                        "sleep_replay_per_pair": 1}  # fmt: skip
    assert TraceSettings(value_length=6, min_distractor_events=0).pinned() == {
        **TraceSettings().pinned(), "value_length": 6, "min_distractor_events": 0}  # fmt: skip


def test_recall_distance_and_random_values_follow_the_settings() -> None:
    from lit_psion.events.traces import VALUE_ALPHABET, TraceSettings, generate_trace

    settings = TraceSettings(n_pairs=2, distractor_events=5, min_distractor_events=1, negotiation_pairs=0,
                             sleep_replay_per_pair=0, value_length=7)  # fmt: skip
    counts, values = set(), set()
    for index in range(60):
        trace = generate_trace(settings, seed=1, split="train", index=index)
        counts.add(sum(s.event.type in ("Message", "ToolResult") for s in trace))
        values.update(s.event.payload["value"] for s in trace if s.event.type == "MemoryWrite")
    assert counts == {1, 2, 3, 4, 5}
    assert len(values) == 120 and all(len(v) == 7 and set(v) <= set(VALUE_ALPHABET) for v in values)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_distractor_events": 5, "distractor_events": 4}, "must be <= distractor_events=4, got 5"),
        ({"min_distractor_events": -1}, "min_distractor_events must be an integer >= 0, got -1"),
        ({"value_length": -2}, "value_length must be an integer >= 0, got -2"),
        ({"value_length": 2.5}, "value_length must be an integer >= 0, got 2.5"),
        ({"n_pairs": 27}, "n_pairs must be <= 26"),
    ],
)
def test_bad_trace_settings_are_refused_quoting_the_value(change: dict, message: str) -> None:
    from lit_psion.core.errors import ConfigError
    from lit_psion.events.traces import TraceSettings

    with pytest.raises(ConfigError, match=message):
        TraceSettings(**change)


def _bpe_codec() -> object:
    from lit_psion.events.codec import BpeEventCodec, train_event_tokenizer
    from lit_psion.events.traces import TraceSettings, generate_trace

    settings = TraceSettings(n_pairs=2, distractor_events=2, value_length=5)
    texts = [json.dumps(s.event.to_json_dict()) for i in range(20) for s in generate_trace(settings, 0, "train", i)]
    return BpeEventCodec(train_event_tokenizer(texts, 400))


@pytest.mark.parametrize("codec", ["bytes", "bpe"])
def test_the_recall_flags_cover_exactly_the_memory_read_values(codec: str) -> None:
    from lit_psion.datamodules.event_traces import encode_trace
    from lit_psion.events.traces import TraceSettings, generate_trace

    coder = EventCodec() if codec == "bytes" else _bpe_codec()
    settings = TraceSettings(n_pairs=3, distractor_events=2, sleep_replay_per_pair=1, value_length=5)
    trace = generate_trace(settings, seed=0, split="val", index=3)  # writes, sleeps and reads share values
    ids, _, _, recall = encode_trace(coder, trace)
    runs, current = [], []
    for token, flagged in zip(ids, recall, strict=True):
        if flagged:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    text = (lambda tokens: bytes(tokens).decode()) if codec == "bytes" else coder.tokenizer.decode
    reads = [s.event.payload["value"] for s in trace if s.event.type == "MemoryRead"]
    assert [text(run).strip('"') for run in runs] == reads  # one run per read, nothing from writes or sleeps


def _memory_data(tmp_path: object, **overrides: object) -> object:
    from lit_psion.datamodules import EventTraceDataModule

    settings = {"n_train": 4, "n_val": 3, "n_pairs": 2, "distractor_events": 2, "negotiation_pairs": 0,
                "sleep_replay_per_pair": 0, "value_length": 4, "vocab_size": 300, "tokenizer_traces": 4,
                "block_size": 512, "batch_size": 2, "cache_dir": str(tmp_path)}  # fmt: skip
    return EventTraceDataModule(**{**settings, **overrides})


def test_trace_windows_give_each_trace_its_own_padded_window(tmp_path: object) -> None:
    from lit_psion.datamodules.event_traces import encode_trace

    data = _memory_data(tmp_path, trace_windows=True)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    codec = data.load_codec()
    for row, index in enumerate(batch["sample_ids"].tolist()):
        ids, _, _, recall = encode_trace(codec, data.trace("val", index))
        window = batch["input_ids"][row].tolist()
        assert window[: len(ids)] == ids and set(window[len(ids) :]) == {codec.pad}  # the whole trace, then padding
        assert batch["recall_mask"][row].tolist() == [bool(flag) for flag in recall[1:]] + [False] * (513 - len(ids))
    assert len(data._dataset("val")) == data.n_val  # every trace is a window, the last one too
    packed = _memory_data(tmp_path)  # without: traces run on across windows
    packed.setup("validate")
    assert next(iter(packed.val_dataloader()))["input_ids"][0].tolist().count(codec.pad) == 0


def test_a_trace_longer_than_its_window_is_refused(tmp_path: object) -> None:
    from lit_psion.core.errors import DataError

    with pytest.raises(DataError, match=r"has \d+ tokens, more than block_size 128"):
        _memory_data(tmp_path, trace_windows=True, block_size=128).setup("validate")


def test_opcodes_on_values_teach_only_where_the_memory_acts() -> None:
    from lit_psion.datamodules.event_traces import encode_trace
    from lit_psion.events.traces import NOP, READ_MEM, WRITE_MEM, TraceSettings, generate_trace

    trace = generate_trace(TraceSettings(n_pairs=2, distractor_events=1, negotiation_pairs=1, value_length=5),
                           seed=0, split="train", index=0)  # fmt: skip
    codec = EventCodec()
    ids, everywhere, _, recall = encode_trace(codec, trace)
    _, on_values, _, _ = encode_trace(codec, trace, opcodes_on_values=True)
    writes = [s.event.payload["value"] for s in trace if s.opcode == WRITE_MEM]  # MemoryWrite and Sleep replay
    written = bytes(t for t, op in zip(ids, on_values, strict=True) if op == WRITE_MEM).decode()
    assert written == "".join(writes) and everywhere.count(WRITE_MEM) > len(written)  # every Write token before
    reading = [i for i, op in enumerate(on_values) if op == READ_MEM]
    assert [i + 1 for i in reading] == [i for i, flag in enumerate(recall) if flag]  # each predicts a read's value
    assert all(op in (NOP, -100) for op, flag in zip(on_values, everywhere, strict=True) if flag == NOP)


def test_distractor_text_is_taught_no_commitment_change_and_the_manifest_says_so(tmp_path: object) -> None:
    from lit_psion.datamodules.event_traces import SUPERVISION, encode_trace

    data = _memory_data(tmp_path)
    manifest = data.prepare()
    trace = data.trace("val", 0)
    _, _, commitments, _ = encode_trace(data.load_codec(), trace)
    distractors = [item for item in trace if item.event.type in ("Message", "ToolResult") and item.commitment == 0]
    assert distractors and 0 in commitments
    assert manifest.record["supervision"] == SUPERVISION == 2


@pytest.mark.parametrize("depth", [980, 3000, 100_000])  # 980: parsed, then too deep to write back (exit 1)
def test_an_events_file_nested_too_deeply_is_one_line_naming_it(tmp_path: object, depth: int) -> None:
    """A JSON value nested deeper than Python parses is the file's line, exit 3, never a RecursionError."""
    from pathlib import Path

    from lit_psion.events.predict import read_events

    path = Path(str(tmp_path)) / "deep.jsonl"
    nested = "[" * depth + "]" * depth
    path.write_text('{"id": "e1", "type": "Message", "sender": "a", "seq": 1, "payload": {"a": ' + nested + "}}\n")
    with pytest.raises(EventError, match=f"^{path}:1: .*nested too deeply to read") as raised:
        read_events(path)
    assert raised.value.exit_code == 3


def test_an_event_with_a_key_given_twice_is_one_line_naming_it(tmp_path: object) -> None:
    """`"id": "e1", ..., "id": "e9"` was read as e9 without a word (the parser keeps the last)."""
    from pathlib import Path

    from lit_psion.events.predict import read_events

    path = Path(str(tmp_path)) / "twice.jsonl"
    path.write_text('{"id": "e1", "type": "Message", "sender": "a", "seq": 1, "payload": {}, "id": "e9"}\n')
    with pytest.raises(EventError, match=f"^{path}:1: not an event \\(the key 'id' twice in one object\\); give "
                       "each key once$") as raised:  # fmt: skip
        read_events(path)
    assert raised.value.exit_code == 3


ESCAPED = [("open\n   2 Message  agent  +1 open", "open\\n   2 Message  agent  +1 open"),
           ("\x1b[31mred", "\\x1b[31mred"), ("tab\there", "tab\\there"), ("café ok", "café ok")]


@pytest.mark.parametrize(("text", "printed"), ESCAPED)
def test_the_events_table_prints_an_events_control_characters_escaped(text: str, printed: str) -> None:
    """An event's text, sender or type cannot forge a row of the `events predict` table or colour it."""
    from lit_psion.commands.events import shown

    assert shown(text) == printed and "\n" not in shown(text) and "\x1b" not in shown(text)


def test_a_cached_event_tokenizer_replaced_with_its_record_is_named_with_the_fix(tmp_path: object) -> None:
    """The record is rewritten too, so the cache trusts it: the line was "lacks its framing tokens; train it with
    train_event_tokenizer", naming neither the file nor a command."""
    from tokenizers import Tokenizer, models

    from lit_psion.core.errors import DataError
    from lit_psion.datamodules.tokenizer import keep_recorded

    data = _memory_data(tmp_path)
    path = data.tokenizer_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    keep_recorded(path, Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).to_str())
    with pytest.raises(DataError, match="is not one train_event_tokenizer wrote") as raised:
        data.load_codec()
    assert str(path) in str(raised.value) and "delete it to train it again" in str(raised.value)
    path.unlink()
    assert data.load_codec().vocab_size > 2  # deleted, it is trained again


@pytest.mark.parametrize(("line", "says"), [
    ('{"id": "e1", "type": "Message", "sender": "a", "seq": 1, "payload": {}, "colour": "red"}',
     "event field 'colour' is not part of the envelope"),
    ('{"id": "e1", "type": "Shout", "sender": "a", "seq": 1, "payload": {}}', "unknown type 'Shout'"),
])  # fmt: skip
def test_an_event_the_envelope_refuses_is_not_called_a_repeated_key(tmp_path: object, line: str, says: str) -> None:
    """An unknown field said "...; give each key once": the envelope's refusal was caught as the parser's."""
    from pathlib import Path

    from lit_psion.events.predict import read_events

    path = Path(str(tmp_path)) / "odd.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(EventError) as raised:
        read_events(path)
    assert str(raised.value).startswith(f"{path}:1: ") and says in str(raised.value), raised.value
    assert "give each key once" not in str(raised.value) and raised.value.exit_code == 3


def test_a_line_separator_inside_an_events_text_is_text_not_a_line_break(tmp_path: object) -> None:
    """U+2028 (or U+0085, U+000B) written raw inside a JSON string split the line: a valid event was refused as
    "not JSON", and the line numbers after it were off."""
    import json
    from pathlib import Path

    from lit_psion.events.predict import read_events

    path = Path(str(tmp_path)) / "separators.jsonl"
    texts = ["one\u2028two", "three\x85four\x0bfive"]
    lines = [json.dumps({**GOOD, "id": f"e{i}", "seq": i, "payload": {"text": t}}, ensure_ascii=False)
             for i, t in enumerate(texts)]  # fmt: skip
    path.write_bytes(("\r\n".join(lines) + "\n").encode())
    assert [event.payload["text"] for event in read_events(path)] == texts


def test_an_integer_too_long_to_read_is_not_called_a_repeated_key(tmp_path: object) -> None:
    from pathlib import Path

    from lit_psion.events.predict import read_events

    path = Path(str(tmp_path)) / "long.jsonl"
    path.write_text('{"id": "e1", "type": "Message", "sender": "a", "seq": ' + "9" * 5000 + ', "payload": {}}\n')
    with pytest.raises(EventError, match="give numbers Python reads") as raised:
        read_events(path)
    assert "give each key once" not in str(raised.value) and raised.value.exit_code == 3


def test_a_payload_too_deep_to_write_back_is_refused_as_such() -> None:
    """A payload parsed just under the reader's limit was exit 1: writing it back (to check it is plain JSON) recursed
    deeper than Python allows, and only TypeError and ValueError were caught."""
    from lit_psion.events import EventEnvelope

    nested: list = []
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(EventError, match="'payload' is nested too deeply to read") as raised:
        EventEnvelope.from_json_dict({**GOOD, "payload": {"x": nested}})
    assert raised.value.exit_code == 3
