"""Generated MOSAIC event traces (seed 003) as a replay-safe DataModule.

Traces come from :func:`lit_psion.events.traces.generate_trace`, deterministic per (seed, split,
index). Each event is encoded with its commitment meta-fields hidden (``commitment_delta`` 0, no
``commitment_id``): predicting them is the model's job, so they appear only as teacher labels.
Traces are packed into one token stream per split and cut into windows of ``block_size + 1``, like
the corpus DataModule (or, with ``trace_windows``, each trace padded to its own window, so that
a read always shares its window with its write); a batch holds ``input_ids``, ``targets``, the
per-input-token teacher tensors ``opcode_targets`` and ``commitment_targets`` (-100 where
unsupervised), ``recall_mask`` (per target: True where the target is a token of a MemoryRead's
value, what recall accuracy is measured on), ``sample_ids`` and the ``cursor``. The manifest pins
the generator settings, counts and tokenizer digest; resuming
against a different one is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch.utils.data import Dataset

from lit_psion.core import canonical_json, sha256_bytes
from lit_psion.core.contracts import DataFacts
from lit_psion.core.errors import DataError
from lit_psion.core.manifest import RecordManifest
from lit_psion.datamodules.base import ReplayDataModule, Split, positive_integers
from lit_psion.datamodules.tokenizer import event_tokenizer_path, keep_recorded, trusted_entry
from lit_psion.events.codec import BpeEventCodec, train_event_tokenizer
from lit_psion.events.envelope import EventEnvelope
from lit_psion.events.traces import IGNORE, NOP, READ_MEM, WRITE_MEM, Supervised, TraceSettings, generate_trace

FORMAT_VERSION = 1
SUPERVISION = 2
"""What the traces' labels teach, recorded in the data manifest: 2 teaches commitment 0 on distractor text (1 left
it unsupervised), so a run trained under other labels is refused on resume instead of continuing under these."""


def observed(event: EventEnvelope) -> EventEnvelope:
    """The event as the model sees it: commitment meta-fields hidden."""
    return dataclasses.replace(event, commitment_delta=0, commitment_id=None)


def encode_trace(
    codec: BpeEventCodec, trace: list[Supervised], opcodes_on_values: bool = False
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Token ids with their opcode and commitment teacher labels (one per token, -100 unsupervised),
    and a recall flag per token: 1 on the tokens of a MemoryRead's value, 0 elsewhere.

    An event's opcode is taught on all its tokens, or with ``opcodes_on_values`` only where the memory
    acts: WRITE_MEM on the value tokens a write stores, READ_MEM on the tokens just before a read's
    value tokens (those that predict them), NOP on the rest of the event.
    """
    events = [observed(s.event) for s in trace]
    ids, spans = codec.encode_spans(events)
    _, value_spans = codec.encode_spans(events, field="value")
    opcodes, commitments, recall = [IGNORE] * len(ids), [IGNORE] * len(ids), [0] * len(ids)
    for item, (start, end, text_start, text_end), value in zip(trace, spans, value_spans, strict=True):
        opcodes[start:end] = [item.opcode] * (end - start)
        if opcodes_on_values and item.opcode != NOP and value[2] < value[3]:
            lo, hi = (value[2], value[3]) if item.opcode == WRITE_MEM else (value[2] - 1, value[3] - 1)
            opcodes[start:end] = [NOP] * (end - start)
            opcodes[lo:hi] = [item.opcode] * (hi - lo)
        if item.commitment is not None:
            lo, hi = (start, end) if item.whole_event_commitment else (text_start, text_end)
            commitments[lo:hi] = [item.commitment] * (hi - lo)
        if item.opcode == READ_MEM and item.event.type == "MemoryRead":
            recall[value[2] : value[3]] = [1] * (value[3] - value[2])
    return ids, opcodes, commitments, recall


class PackedEvents(Dataset):
    """Windows of ``block_size + 1`` tokens every ``block_size`` over a split's packed streams."""

    def __init__(self, streams: dict[str, torch.Tensor], block_size: int) -> None:
        self.streams, self.block_size = streams, block_size
        self.offsets = torch.arange(block_size + 1)

    def __len__(self) -> int:
        return max(0, (len(self.streams["ids"]) - 1) // self.block_size)

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        sample_ids = torch.tensor(indices, dtype=torch.long)
        window = sample_ids[:, None] * self.block_size + self.offsets
        ids = self.streams["ids"][window].long()
        return {
            "input_ids": ids[:, :-1], "targets": ids[:, 1:], "sample_ids": sample_ids,
            "opcode_targets": self.streams["opcode"][window[:, :-1]].long(),
            "commitment_targets": self.streams["commitment"][window[:, :-1]].long(),
            "recall_mask": self.streams["recall"][window[:, 1:]].bool(),
        }  # fmt: skip


class EventTraceDataModule(ReplayDataModule):
    """Associative-recall, sleep-replay and negotiation traces for MosaicLM.

    Args:
        n_train, n_val: Traces per split.
        n_test: Traces of a test split (default 0: none, and ``test`` is refused).
        n_pairs, distractor_events, negotiation_pairs, sleep_replay_per_pair: The trace shape (seed 003).
        min_distractor_events: With a value, each trace draws its distractor count (the recall distance)
            from [min_distractor_events, distractor_events].
        value_length: 0: template values (a word and two digits); > 0: random values of this many letters.
        trace_windows: Give each trace its own window of ``block_size`` tokens, padded (a longer trace is
            refused), instead of packing traces across windows: a read then always shares a window with its write.
        opcodes_on_values: Teach the memory opcodes only where the memory acts (a write's value tokens, the
            tokens predicting a read's value) instead of on every token of a memory event.
        vocab_size: Event BPE vocabulary size (trained on ``tokenizer_traces`` training traces).
        block_size: Tokens of context per sample.
        batch_size: Samples per training batch.
        seed: Seed of the traces and of the sample order.
        cache_dir: Where event tokenizers are cached (default ``$LIT_PSION_CACHE`` or ``~/.cache/lit_psion``).
        num_workers: DataLoader worker processes.
    """

    data_name = "event-trace data"
    more_data_hint = "raise --data.n_train or --data.n_val, or lower --data.block_size or --data.batch_size"
    test_split_hint = "it has n_test 0; train a run with --data.n_test 100 to generate held-out test traces"

    def __init__(
        self,
        n_train: int = 2000,
        n_val: int = 100,
        n_test: int = 0,
        n_pairs: int = 3,
        distractor_events: int = 4,
        negotiation_pairs: int = 2,
        sleep_replay_per_pair: int = 1,
        min_distractor_events: int | None = None,
        value_length: int = 0,
        trace_windows: bool = False,
        opcodes_on_values: bool = False,
        vocab_size: int = 2048,
        tokenizer_traces: int = 300,
        block_size: int = 512,
        batch_size: int = 8,
        seed: int = 1337,
        cache_dir: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers, cache_dir=cache_dir)
        self.settings = TraceSettings(n_pairs=n_pairs, distractor_events=distractor_events,
                                      negotiation_pairs=negotiation_pairs,
                                      sleep_replay_per_pair=sleep_replay_per_pair,
                                      min_distractor_events=min_distractor_events,
                                      value_length=value_length)  # fmt: skip
        self.trace_windows, self.opcodes_on_values = trace_windows, opcodes_on_values
        self.n_train, self.n_val, self.requested_vocab_size = n_train, n_val, vocab_size
        self.n_test = n_test
        self.tokenizer_traces, self.block_size = tokenizer_traces, block_size
        self.codec: BpeEventCodec | None = None
        self._tokenizer_sha256 = ""
        self._streams: dict[str, dict[str, torch.Tensor]] = {}
        problems = positive_integers(n_train=n_train, n_val=n_val, block_size=block_size,
                                     tokenizer_traces=tokenizer_traces)  # fmt: skip
        if not isinstance(n_test, int) or isinstance(n_test, bool) or n_test < 0:
            problems.append(f"n_test must be an integer >= 0 (0: no test split), got {n_test!r}")
        if not isinstance(vocab_size, int) or vocab_size < 300:
            problems.append(f"vocab_size must be >= 300 (256 bytes and the framing tokens), got {vocab_size!r}")
        self._refuse_bad_settings(*problems)

    def _prepare(self) -> RecordManifest:
        """Train or load the tokenizer, generate and encode the traces; return the manifest."""
        key, _ = self._tokenizer_key()
        self.load_codec()
        counts = {}
        for split, count in (("train", self.n_train), ("val", self.n_val), ("test", self.n_test)):
            if not count:
                continue
            self._streams[split] = self._encode(split, count)
            counts[split] = {"traces": count, "tokens": len(self._streams[split]["ids"]),
                             "samples": len(self._dataset(split))}  # fmt: skip
        tokenizer_digest = self._tokenizer_sha256  # of the very text the codec was built from
        record = {"kind": "event_traces", **key, "block_size": self.block_size, "n_train": self.n_train,
                  "n_val": self.n_val, "tokenizer_digest": tokenizer_digest, "counts": counts,
                  "supervision": SUPERVISION}  # fmt: skip
        for name in ("trace_windows", "opcodes_on_values"):  # recorded only when set, as n_test
            if getattr(self, name):
                record[name] = True
        if self.n_test:  # recorded only when asked for: data without a test split keeps its manifest digest
            record["n_test"] = self.n_test
        return RecordManifest(record)

    def _encode(self, split: Split, count: int) -> dict[str, torch.Tensor]:
        """The packed token, opcode-label and commitment-label streams of ``count`` traces of ``split``."""
        ids, opcodes, commitments, recall = [], [], [], []
        for index in range(count):
            trace_ids, trace_opcodes, trace_commitments, trace_recall = encode_trace(
                self.codec, self.trace(split, index), self.opcodes_on_values
            )
            if self.trace_windows:
                padding = self.block_size - len(trace_ids)
                if padding < 0:
                    raise DataError(f"{split} trace {index} has {len(trace_ids)} tokens, more than block_size "
                                    f"{self.block_size}: raise --data.block_size or shorten the traces")  # fmt: skip
                trace_ids += [self.codec.pad] * padding
                trace_opcodes += [IGNORE] * padding
                trace_commitments += [IGNORE] * padding
                trace_recall += [0] * padding
            ids += trace_ids
            opcodes += trace_opcodes
            commitments += trace_commitments
            recall += trace_recall
        if self.trace_windows and count:  # the last window's last target, so that the last trace is a window too
            ids.append(self.codec.pad)
            opcodes.append(IGNORE)
            commitments.append(IGNORE)
            recall.append(0)
        return {"ids": torch.tensor(ids, dtype=torch.int32), "opcode": torch.tensor(opcodes, dtype=torch.int16),
                "commitment": torch.tensor(commitments, dtype=torch.int16),
                "recall": torch.tensor(recall, dtype=torch.int8)}  # fmt: skip

    def _dataset(self, split: Split) -> PackedEvents:
        return PackedEvents(self._streams[split], self.block_size)

    def has_test_split(self) -> bool:
        return self.n_test > 0

    def tokenizer_path(self) -> Path:
        return self._tokenizer_key()[1]

    def _tokenizer_key(self) -> tuple[dict[str, Any], Path]:
        key = {"format": FORMAT_VERSION, "settings": self.settings.pinned(), "seed": self.seed,
               "vocab_size": self.requested_vocab_size, "traces": self.tokenizer_traces}  # fmt: skip
        return key, event_tokenizer_path(key, self.cache_dir)

    def load_codec(self) -> BpeEventCodec:
        """The event codec (its tokenizer trained on the first training traces, cached by settings)."""
        if self.codec is None:
            _, path = self._tokenizer_key()
            if (text := trusted_entry(path)) is None:  # shared by runs: trusted only as recorded when trained
                texts = (canonical_json(observed(s.event).to_json_dict()).decode()
                         for i in range(self.tokenizer_traces) for s in self.trace("train", i))  # fmt: skip
                text = train_event_tokenizer(texts, self.requested_vocab_size).to_str()
                keep_recorded(path, text)
            try:
                codec = BpeEventCodec(Tokenizer.from_str(text))
            except Exception as error:  # a cache entry replaced together with its record: not an event tokenizer
                raise DataError(f"the cached event tokenizer {str(path)!r} is not one train_event_tokenizer wrote "
                                f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); delete it "
                                "to train it again, or use the cache the run trained with") from error  # fmt: skip
            self.codec, self._tokenizer_sha256 = codec, sha256_bytes(text.encode())
        return self.codec

    def trace(self, split: str, index: int) -> list[Supervised]:
        return generate_trace(self.settings, self.seed, split, index)

    @property
    def vocab_size(self) -> int:
        """The event tokenizer's vocabulary size (trains or loads the tokenizer, not the traces)."""
        return self.load_codec().vocab_size

    def data_facts(self) -> DataFacts:
        return DataFacts(vocab_size=self.vocab_size, block_size=self.block_size)
