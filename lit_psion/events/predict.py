"""``python -m lit_psion events predict --ckpt RUN_OR_CHECKPOINT EVENTS.jsonl``: commitment states of events.

Reads events (one JSON envelope per line), hides their commitment fields as in training, runs the
trained MosaicLM, and prints each event with its predicted commitment delta (the majority class
over its text tokens, or over the whole event when it has no text) and the commitments still open
after it. ``--json`` prints one JSON object per event instead.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from lit_psion.core import RunLayout, read_json, sha256_file
from lit_psion.core.errors import CheckpointError, DataError
from lit_psion.core.files import unique_keys
from lit_psion.events.envelope import EventEnvelope, EventError


def read_events(path: Path) -> list[EventEnvelope]:
    if not path.is_file():
        raise DataError(f"events file {str(path)!r} not found (or not a file); give a JSONL file of event envelopes")
    events = []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise EventError(f"{path}: not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}); give "
                         "JSONL, one event envelope per line") from error  # fmt: skip
    for number, line in enumerate(text.split("\n"), start=1):  # (not splitlines: U+2028 may be in a JSON string)
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as error:
            raise EventError(f"{path}:{number}: not JSON ({error.msg})") from error
        except ValueError as error:  # a key given twice (which value counts would be the parser's choice), or an
            fix = "give each key once" if "twice" in str(error) else "give numbers Python reads (at most 4300 digits)"
            raise EventError(f"{path}:{number}: not an event ({error}); {fix}") from error  # integer too long
        except RecursionError as error:
            raise EventError(f"{path}:{number}: not an event (nested too deeply to read)") from error
        try:  # (an EventError is a ValueError: read apart from the JSON, so it is not taken for a repeated key)
            events.append(EventEnvelope.from_json_dict(record))
        except EventError as error:
            raise EventError(f"{path}:{number}: {error}") from error
    if not events:
        raise EventError(f"{path} holds no events")
    return events


def load_model(location: Path) -> tuple[Any, Any]:
    """MosaicLM with the checkpoint's weights, and the run's event codec."""
    from lit_psion.models import MosaicLM
    from lit_psion.runs import load_run

    run = load_run(location)
    trained = run.model_class().rsplit(".", 1)[-1]
    if trained != MosaicLM.__name__:  # before any weight is loaded into a model of another family
        raise CheckpointError(f"the run in {str(run.layout.run_dir)!r} trained {trained}, not MosaicLM; give "
                              "--ckpt a MosaicLM run (events predict reads event traces)")  # fmt: skip
    commitment = (run.config().get("model", {}).get("init_args", {}).get("mosaic") or {}).get("commitment_head", True)
    if commitment is False:  # (the default builds one; mosaic_memory.yaml does not)
        raise CheckpointError(f"the run in {str(run.layout.run_dir)!r} trained MosaicLM without a commitment head "
                              "(mosaic.commitment_head false), which events predict reads; give a run trained with "
                              "one (configs/mosaic_commitment.yaml)")  # fmt: skip
    model, data = run.build(check_data=lambda data: _check_tokenizer(run.layout, data))
    return model, data.load_codec()


def _check_tokenizer(layout: RunLayout, datamodule: Any) -> None:
    """Refuse a tokenizer other than the one the run trained with (a different cache or tokenizers version)."""
    if not layout.data_manifest.is_file():
        return
    expected = read_json(layout.data_manifest).get("tokenizer_digest")
    actual = sha256_file(datamodule.tokenizer_path())
    if expected is not None and actual != expected:
        raise DataError(f"the event tokenizer here (sha256 {actual[:16]}...) is not the one run {layout.run_id!r} "
                        f"trained with ({expected[:16]}...; another tokenizers version trained it, or its cache "
                        "entry was replaced with its record); predict with the LIT_PSION_CACHE the run trained "
                        "with, or retrain")  # fmt: skip


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
