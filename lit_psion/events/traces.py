"""Generated event traces for MOSAIC (seed 003): associative recall, sleep replay, negotiation.

A trace is deterministic in (seed, split, index). It has, in order:

1. a write phase: ``n_pairs`` MemoryWrite events ``{"key", "value"}`` (opcode WRITE_MEM);
2. ``distractor_events`` Message/ToolResult events with unrelated text (opcode NOP);
3. sleep replay: ``sleep_replay_per_pair`` Sleep events per pair repeating it (WRITE_MEM);
4. ``negotiation_pairs`` negotiations: the user asks, the agent accepts ("I will ...", opens a
   commitment, +1), works (a ToolCall and its ToolResult, 0), and completes ("Here is ...", closes
   the same commitment_id, -1);
5. a read phase: a MemoryRead event ``{"key", "value"}`` per pair, in shuffled order (READ_MEM),
   whose value the model can only predict by recalling the write.

Each event carries its supervision: the opcode of its tokens, and the commitment delta taught on
its text span (+1/-1 on the agent's accept/complete text, 0 on the work events and the user's
request); everything else is -100 (unsupervised).
"""

from __future__ import annotations

import dataclasses
import random

from lit_psion.events.envelope import EventEnvelope

NOP, WRITE_MEM, READ_MEM = 0, 1, 2
OPCODES = ("NOP", "WRITE_MEM", "READ_MEM")
IGNORE = -100
_WORDS = ("alpha", "bravo", "cedar", "delta", "ember", "fjord", "gamma", "harbor", "indigo", "juniper", "kilo",
          "lumen", "maple", "nectar", "onyx", "pylon", "quartz", "raven", "sierra", "tango", "umber", "vivid",
          "willow", "xenon", "yonder", "zephyr")  # fmt: skip
_OBJECTS = ("the report", "that file", "the invoice", "the notes", "the schedule", "the logs", "the draft", "the map")
_TOOLS = ("search", "open", "read", "grep")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TraceSettings:
    n_pairs: int = 3
    distractor_events: int = 4
    negotiation_pairs: int = 2
    sleep_replay_per_pair: int = 1

    def __post_init__(self) -> None:
        from lit_psion.core.errors import ConfigError

        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 0:
                raise ConfigError(f"{field.name} must be >= 0, got {getattr(self, field.name)!r}")
        if self.n_pairs + self.negotiation_pairs == 0:
            raise ConfigError("a trace needs n_pairs or negotiation_pairs > 0")


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
    values = [f"{rng.choice(_WORDS)}-{rng.randrange(100):02d}" for _ in keys]
    for key, value in zip(keys, values, strict=True):
        add("MemoryWrite", "mem", {"key": key, "value": value}, WRITE_MEM)
    for _ in range(settings.distractor_events):
        if rng.random() < 0.5:
            add("Message", "user", {"text": f"note: {rng.choice(_WORDS)} {rng.choice(_WORDS)}"}, NOP)
        else:
            add("ToolResult", "tool", {"text": f"{rng.choice(_WORDS)} ok"}, NOP)
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
