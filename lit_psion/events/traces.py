"""Generated event traces for MOSAIC (seed 003): associative recall, sleep replay, negotiation.

A trace is deterministic in (seed, split, index). It has, in order:

1. a write phase: ``n_pairs`` MemoryWrite events ``{"key", "value"}`` (opcode WRITE_MEM);
2. ``distractor_events`` Message/ToolResult events with unrelated text (opcode NOP), or with
   ``min_distractor_events`` set, a count drawn uniformly from [min_distractor_events, distractor_events]:
   the recall distance;
3. sleep replay: ``sleep_replay_per_pair`` Sleep events per pair repeating it (WRITE_MEM);
4. ``negotiation_pairs`` negotiations: the user asks, the agent accepts ("I will ...", opens a
   commitment, +1), works (a ToolCall and its ToolResult, 0), and completes ("Here is ...", closes
   the same commitment_id, -1);
5. a read phase: a MemoryRead event ``{"key", "value"}`` per pair, in shuffled order (READ_MEM),
   whose value the model can only predict by recalling the write.

Each event carries its supervision: the opcode of its tokens, and the commitment delta taught on
its text span (+1/-1 on the agent's accept/complete text, 0 on the work events and the user's
request, and 0 on the distractors' text: they change no commitment); everything else is -100 (unsupervised).

Values are a word and two digits by default; with ``value_length`` > 0 they are random strings of
that many characters from :data:`VALUE_ALPHABET`, which no template or tokenizer merge can predict:
only recalling the write can.
"""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar

from lit_psion.events.envelope import EventEnvelope

NOP, WRITE_MEM, READ_MEM = 0, 1, 2
OPCODES = ("NOP", "WRITE_MEM", "READ_MEM")
IGNORE = -100
_WORDS = ("alpha", "bravo", "cedar", "delta", "ember", "fjord", "gamma", "harbor", "indigo", "juniper", "kilo",
          "lumen", "maple", "nectar", "onyx", "pylon", "quartz", "raven", "sierra", "tango", "umber", "vivid",
          "willow", "xenon", "yonder", "zephyr")  # fmt: skip
_OBJECTS = ("the report", "that file", "the invoice", "the notes", "the schedule", "the logs", "the draft", "the map")
_TOOLS = ("search", "open", "read", "grep")
VALUE_ALPHABET = "ABDEFGHIJKLNOPQUVXYZ"
"""Characters of random values (``value_length`` > 0): capitals no event template uses, so the event BPE
gives one token per letter (chance of guessing one is 1 / 20)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TraceSettings:
    n_pairs: int = 3
    distractor_events: int = 4
    negotiation_pairs: int = 2
    sleep_replay_per_pair: int = 1
    min_distractor_events: int | None = None
    """With a value, each trace draws its distractor count from [min_distractor_events, distractor_events]."""
    value_length: int = 0
    """0: values are a word and two digits; > 0: random strings of this many ``VALUE_ALPHABET`` characters."""

    NEW_FIELDS: ClassVar[dict[str, int | None]] = {"min_distractor_events": None, "value_length": 0}
    """Fields added after traces were first pinned, with their defaults: recorded only when changed, so
    manifests and tokenizer keys of existing runs keep their digests."""

    def __post_init__(self) -> None:
        from lit_psion.core.errors import ConfigError

        problems = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                problems.append(f"{field.name} must be an integer >= 0, got {value!r}")
        if not problems and self.n_pairs + self.negotiation_pairs == 0:
            problems.append("a trace needs n_pairs or negotiation_pairs > 0")
        if not problems and self.n_pairs > len(_WORDS):
            problems.append(f"n_pairs must be <= {len(_WORDS)} (one distinct key word each), got {self.n_pairs!r}")
        low = self.min_distractor_events
        if not problems and low is not None and low > self.distractor_events:
            problems.append(f"min_distractor_events must be <= distractor_events={self.distractor_events}, got {low!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    def pinned(self) -> dict[str, int | None]:
        """The settings as recorded in manifests and tokenizer keys (new fields only when set)."""
        record = dataclasses.asdict(self)
        for name, default in self.NEW_FIELDS.items():
            if record[name] == default:
                del record[name]
        return record


@dataclasses.dataclass(frozen=True, slots=True)
class Supervised:
    """An event and what its tokens are taught: an opcode and a commitment delta on its text (or None)."""

    event: EventEnvelope
    opcode: int
    commitment: int | None = None
    whole_event_commitment: bool = False
    """Teach ``commitment`` on every token of the event (work events) rather than on its text only."""


def generate_trace(settings: TraceSettings, seed: int, split: str, index: int) -> list[Supervised]:
    rng = random.Random(f"{seed}/{split}/{index}")
    out: list[Supervised] = []

    def add(kind: str, sender: str, payload: dict, opcode: int, commitment: int | None = None,
            delta: int = 0, cid: str | None = None, whole: bool = False) -> None:  # fmt: skip
        event = EventEnvelope(id=f"e{len(out)}", type=kind, sender=sender, payload=payload, seq=len(out),
                              commitment_delta=delta, commitment_id=cid)  # fmt: skip
        out.append(Supervised(event, opcode, commitment, whole))

    keys = rng.sample(_WORDS, settings.n_pairs)
    if settings.value_length:
        values = ["".join(rng.choices(VALUE_ALPHABET, k=settings.value_length)) for _ in keys]
    else:
        values = [f"{rng.choice(_WORDS)}-{rng.randrange(100):02d}" for _ in keys]
    for key, value in zip(keys, values, strict=True):
        add("MemoryWrite", "mem", {"key": key, "value": value}, WRITE_MEM)
    distractors = settings.distractor_events
    if settings.min_distractor_events is not None:
        distractors = rng.randint(settings.min_distractor_events, distractors)
    for _ in range(distractors):
        if rng.random() < 0.5:
            add("Message", "user", {"text": f"note: {rng.choice(_WORDS)} {rng.choice(_WORDS)}"}, NOP, commitment=0)
        else:
            add("ToolResult", "tool", {"text": f"{rng.choice(_WORDS)} ok"}, NOP, commitment=0)
    for key, value in zip(keys, values, strict=True):
        for _ in range(settings.sleep_replay_per_pair):
            add("Sleep", "mem", {"key": key, "value": value}, WRITE_MEM)
    for j in range(settings.negotiation_pairs):
        cid = f"{index:08x}c{j:02x}"
        thing, tool = rng.choice(_OBJECTS), rng.choice(_TOOLS)
        add("Message", "user", {"text": f"Can you get {thing}?"}, NOP, commitment=0)
        add("Message", "agent", {"text": f"I will look for {thing}"}, NOP, commitment=1, delta=1, cid=cid)
        add("ToolCall", "agent", {"tool": tool, "arg": thing}, NOP, commitment=0, whole=True)
        add("ToolResult", "tool", {"text": f"{tool} found {thing}"}, NOP, commitment=0, whole=True)
        add("Message", "agent", {"text": f"Here is {thing}"}, NOP, commitment=-1, delta=-1, cid=cid)
    for position in rng.sample(range(len(keys)), len(keys)):
        add("MemoryRead", "mem", {"key": keys[position], "value": values[position]}, READ_MEM)
    return out
