"""``python -m lit_psion events predict --ckpt RUN_OR_CHECKPOINT EVENTS.jsonl``: commitment states of events.

Reads events (one JSON envelope per line), hides their commitment fields as in training, runs the
trained MosaicLM, and prints each event with its predicted commitment delta (the majority class
over its text tokens, or over the whole event when it has no text) and the commitments still open
after it. ``--json`` prints one JSON object per event instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import yaml

from lit_psion.core.errors import ConfigError
from lit_psion.events.envelope import EventEnvelope, EventError

LABELS = {-1: "close", 0: "neutral", 1: "open"}


def read_events(path: Path) -> list[EventEnvelope]:
    if not path.is_file():
        raise ConfigError(f"events file {str(path)!r} not found")
    events = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(EventEnvelope.from_json_dict(json.loads(line)))
        except json.JSONDecodeError as error:
            raise EventError(f"{path}:{number}: not JSON ({error.msg})") from error
        except EventError as error:
            raise EventError(f"{path}:{number}: {error}") from error
    if not events:
        raise EventError(f"{path} holds no events")
    return events


def load_model(location: Path) -> tuple[Any, Any]:
    """MosaicLM with the checkpoint's weights, and the run's event codec."""
    from lit_psion.callbacks.checkpoint import resolve_checkpoint
    from lit_psion.callbacks.checkpoint_io import MANIFEST, ManifestCheckpointIO
    from lit_psion.cli import LitPsionCLI
    from lit_psion.models import MosaicLM

    if (location / "run.json").is_file():
        run_dir, checkpoint = location, resolve_checkpoint(location)
    elif (location / MANIFEST).is_file():
        run_dir, checkpoint = location.parent.parent, location
    else:
        raise ConfigError(f"--ckpt {str(location)!r} is neither a run directory nor a checkpoint directory")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in ("ckpt_path", "weights_only"):  # keys of the fit subcommand, not of the model and data
        config.pop(key, None)
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it also sees this command's flags
    try:
        cli = LitPsionCLI(args=config, run=False)
    finally:
        sys.argv = argv
    if not isinstance(cli.model, MosaicLM):
        raise ConfigError(f"the run in {str(run_dir)!r} trained {type(cli.model).__name__}, not MosaicLM")
    state = ManifestCheckpointIO().load_checkpoint(checkpoint)
    cli.model.load_state_dict(state["state_dict"])
    codec = cli.datamodule.load_codec()
    _check_tokenizer(run_dir, cli.datamodule)
    return cli.model.eval(), codec


def _check_tokenizer(run_dir: Path, datamodule: Any) -> None:
    """Refuse a tokenizer other than the one the run trained with (a different cache or tokenizers version)."""
    from lit_psion.core import read_json, sha256_file
    from lit_psion.core.errors import DataError

    manifest = run_dir / "data_manifest.json"
    if not manifest.is_file():
        return
    expected = read_json(manifest).get("tokenizer_digest")
    actual = sha256_file(datamodule.tokenizer_path())
    if expected is not None and actual != expected:
        raise DataError(f"the event tokenizer here (sha256 {actual[:16]}...) is not the one run {run_dir.name!r} "
                        f"trained with ({expected[:16]}...); predict where the run's cache is, or retrain")  # fmt: skip


@torch.no_grad()
def predict(model: Any, codec: Any, events: list[EventEnvelope]) -> list[dict[str, Any]]:
    from lit_psion.datamodules.event_traces import observed

    ids, spans = codec.encode_spans([observed(event) for event in events])
    block = model.decoder_config.block_size
    classes: list[int] = []
    for start in range(0, len(ids), block):
        window = torch.tensor(ids[start : start + block])[None]
        classes += (model(window)["mosaic_commitment_logits"][0].argmax(-1) - 1).tolist()
    results, open_ids = [], []
    for event, (start, end, text_start, text_end) in zip(events, spans, strict=True):
        lo, hi = (text_start, text_end) if text_end > text_start else (start, end)
        delta = Counter(classes[lo:hi]).most_common(1)[0][0]
        if delta == 1:
            open_ids.append(event.commitment_id or event.id)
        elif delta == -1 and open_ids:
            open_ids.remove(event.commitment_id if event.commitment_id in open_ids else open_ids[-1])
        row = {"id": event.id, "seq": event.seq, "type": event.type, "sender": event.sender}
        results.append({**row, "text": event.payload.get("text"), "predicted_delta": delta, "open": list(open_ids)})
    return results


def events_command(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_psion events", exit_on_error=False)
    parser.add_argument("action", choices=["predict"])
    parser.add_argument("--ckpt", type=Path, required=True, help="a MosaicLM run directory or checkpoint directory")
    parser.add_argument("events", type=Path, help="JSONL, one event envelope per line")
    parser.add_argument("--json", action="store_true", help="print one JSON object per event")
    parsed = parser.parse_args(args)
    events = read_events(parsed.events)
    model, codec = load_model(parsed.ckpt)
    results = predict(model, codec, events)
    for row in results:
        if parsed.json:
            print(json.dumps(row, sort_keys=True))
        else:
            text = (row["text"] or "")[:48]
            print(f"{row['seq']:>4} {row['type']:<11} {row['sender']:<6} {row['predicted_delta']:+d} "
                  f"{LABELS[row['predicted_delta']]:<7} open={len(row['open'])}  {text}")  # fmt: skip
    outstanding = results[-1]["open"] if results else []
    print(f"open commitments outstanding: {', '.join(outstanding) if outstanding else 'none'}",
          file=sys.stderr if parsed.json else sys.stdout)  # fmt: skip
