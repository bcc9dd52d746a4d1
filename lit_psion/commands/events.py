"""``python -m lit_psion events predict --ckpt RUN_OR_CHECKPOINT EVENTS.jsonl``: commitment states of events."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lit_psion.commands import CommandParser

LABELS = {-1: "close", 0: "neutral", 1: "open"}


def main(args: list[str]) -> None:
    parser = CommandParser("python -m lit_psion events")
    parser.add_argument("action", choices=["predict"], metavar="predict",
                        help="print each event's predicted commitment change and what is still open")
    parser.add_argument("--ckpt", type=Path, required=True, help="a MosaicLM run directory or checkpoint directory")
    parser.add_argument("events", type=Path, help="JSONL, one event envelope per line")
    parser.add_argument("--json", action="store_true", help="print one JSON object per event")
    parsed = parser.parse_args(args)
    if not (parsed.ckpt.exists() or parsed.ckpt.is_symlink()):  # said before torch is imported
        from lit_psion.core.errors import ConfigError
        from lit_psion.core.layout import no_run_or_checkpoint

        raise ConfigError(no_run_or_checkpoint(parsed.ckpt))
    from lit_psion.events.predict import load_model, predict, read_events  # torch: only once there is work

    events = read_events(parsed.events)
    model, codec = load_model(parsed.ckpt)
    results = predict(model, codec, events)
    for row in results:
        if parsed.json:
            print(json.dumps(row, sort_keys=True))
        else:
            text = row["text"]
            text = shown(text if isinstance(text, str) else "" if text is None else json.dumps(text))[:48]
            print(f"{row['seq']:>4} {shown(row['type']):<11} {shown(row['sender']):<6} {row['predicted_delta']:+d} "
                  f"{LABELS[row['predicted_delta']]:<7} open={len(row['open'])}  {text}")  # fmt: skip
    outstanding = [shown(name) for name in results[-1]["open"]] if results else []
    print(f"open commitments outstanding: {', '.join(outstanding) if outstanding else 'none'}",
          file=sys.stderr if parsed.json else sys.stdout)  # fmt: skip


def shown(text: str) -> str:
    """``text`` for a terminal line: a newline, a tab or an escape sequence an event carries is printed escaped, so
    an event cannot forge a row or colour the table."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(text))
