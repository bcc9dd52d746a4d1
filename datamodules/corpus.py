"""A replay-safe tokenized text corpus: files or the Python standard library, pinned by a manifest.

Flow: resolve sources -> read and digest every file -> cut into documents -> split by document
(train / validation never share one) -> train or load the tokenizer (cached by digest) ->
tokenize with ``datasets`` (Arrow cache keyed by the manifest) -> pack each split into one
token stream -> samples are windows of ``block_size + 1`` tokens every ``sample_stride`` tokens.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import re
import sysconfig
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow.compute
import torch
from tokenizers import Tokenizer
from torch.utils.data import Dataset

from lit_psion.core import atomic_write_json, sha256_bytes, sha256_file
from lit_psion.core.contracts import DataFacts
from lit_psion.core.errors import DataConfigError, DataError, DataManifestMismatch
from lit_psion.core.manifest import DataManifest, SourceFile
from lit_psion.datamodules.base import ReplayDataModule, Split, positive_integers
from lit_psion.datamodules.tokenizer import END_OF_TEXT, TokenizerKind, cached_tokenizer

__all__ = ["CorpusDataModule", "DataConfigError", "DataManifestMismatch", "PackedTokens"]

STDLIB = "stdlib"
_EXCLUDED_STDLIB_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


class PackedTokens(Dataset):
    """Windows of ``block_size + 1`` tokens every ``stride`` tokens over one token stream."""

    def __init__(self, tokens: torch.Tensor, block_size: int, stride: int) -> None:
        self.tokens, self.block_size, self.stride = tokens, block_size, stride
        self.offsets = torch.arange(block_size + 1)

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - self.block_size - 1) // self.stride + 1)

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        """The batch of samples ``indices`` (the loader hands over whole batches)."""
        sample_ids = torch.tensor(indices, dtype=torch.long)
        windows = self.tokens[sample_ids[:, None] * self.stride + self.offsets].long()  # (B, T + 1)
        return {"input_ids": windows[:, :-1], "targets": windows[:, 1:], "sample_ids": sample_ids}


class CorpusDataModule(ReplayDataModule):
    """Tokenized text for next-token prediction, replayable exactly from a cursor.

    Args:
        files: ``"stdlib"`` (the running Python's standard-library ``.py`` files, sorted) or a list
            of files and globs.
        max_bytes: Stop adding source files once this many bytes are taken (``None``: no cap).
        tokenizer: ``bpe`` (byte-level BPE) or ``char`` (one token per character).
        vocab_size: BPE vocabulary size (``char`` takes the corpus's alphabet).
        block_size: Tokens of context per sample.
        batch_size: Samples per training batch.
        documents: ``file`` (each file is a document), ``paragraph`` (split at blank lines), or
            ``auto`` (files when there are at least 10, else paragraphs).
        split: ``hash`` (a seeded hash of each document decides) or ``tail`` (the last documents).
        val_fraction: Share of documents held out for validation.
        sample_stride: Tokens between the starts of consecutive training samples (default ``block_size``).
        seed: Seed of the split and of the sample order.
        cache_dir: Where tokenizers and tokenized corpora are cached (default ``$LIT_PSION_CACHE``
            or ``~/.cache/lit_psion``).
        tokenizer_file: Use this ``tokenizer.json`` instead of training one (e.g. a base run's
            ``<run_dir>/tokenizer.json`` when fine-tuning it on other text).
        num_workers: DataLoader worker processes.
    """

    data_name = "data manifest"
    more_data_hint = "lower --data.batch_size or add text"

    def __init__(
        self,
        files: str | list[str] = STDLIB,
        max_bytes: int | None = 4_000_000,
        tokenizer: TokenizerKind = "bpe",
        vocab_size: int = 2048,
        block_size: int = 128,
        batch_size: int = 16,
        documents: Literal["auto", "file", "paragraph"] = "auto",
        split: Literal["hash", "tail"] = "hash",
        val_fraction: float = 0.1,
        sample_stride: int | None = None,
        seed: int = 1337,
        cache_dir: str | None = None,
        num_workers: int = 0,
        tokenizer_file: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers, cache_dir=cache_dir)
        self.tokenizer_file = tokenizer_file
        self.files = [files] if isinstance(files, str) else list(files)
        self.max_bytes, self.tokenizer_kind, self.requested_vocab_size = max_bytes, tokenizer, vocab_size
        self.block_size, self.documents, self.split = block_size, documents, split
        self.val_fraction, self.sample_stride = val_fraction, sample_stride or block_size
        self.tokenizer: Tokenizer | None = None
        self._splits: dict[str, torch.Tensor] = {}
        self._refuse_bad_settings(*self._setting_problems())

    def _setting_problems(self) -> list[str]:
        problems = [] if self.files else ["files is empty; give --data.files a file, a glob or 'stdlib'"]
        problems += positive_integers(block_size=self.block_size, vocab_size=self.requested_vocab_size,
                                      sample_stride=self.sample_stride)  # fmt: skip
        choices = (("tokenizer", self.tokenizer_kind, ("bpe", "char")), ("split", self.split, ("hash", "tail")),
                   ("documents", self.documents, ("auto", "file", "paragraph")))  # fmt: skip
        for name, value, allowed in choices:
            if value not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.max_bytes is not None and self.max_bytes < 1:
            problems.append(f"max_bytes must be positive or null, got {self.max_bytes!r}")
        return problems

    # -- sources and documents -------------------------------------------------------------

    def _source_paths(self) -> list[tuple[str, Path]]:
        """(name recorded in the manifest, path) for every source file, in order."""
        paths: list[tuple[str, Path]] = []
        for entry in self.files:
            if entry == STDLIB:
                root = Path(sysconfig.get_paths()["stdlib"])
                found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py"))
                kept = [rel for rel in found if not _EXCLUDED_STDLIB_PARTS & set(rel.split("/"))]
                paths += [(f"stdlib/{rel}", root / rel) for rel in kept]
            elif glob.has_magic(entry):
                matches = sorted(glob.glob(entry, recursive=True))
                if not matches:
                    raise DataError(f"data glob matched no files: {entry!r} (check --data.files)")
                paths += [(m, Path(m)) for m in matches if Path(m).is_file()]
            elif Path(entry).is_file():
                paths.append((entry, Path(entry)))
            else:
                raise DataError(f"data file not found: {entry!r} (check --data.files)")
        return paths

    def _read_sources(self) -> tuple[list[SourceFile], list[tuple[str, str]]]:
        """Digest the sources (within ``max_bytes``) and return them with their texts."""
        sources, texts, taken = [], [], 0
        for name, path in self._source_paths():
            data = path.read_bytes()
            if self.max_bytes is not None and taken + len(data) > self.max_bytes and sources:
                break
            taken += len(data)
            sources.append(SourceFile(path=name, sha256=sha256_bytes(data), bytes=len(data)))
            texts.append((name, data.decode("utf-8", errors="replace")))
        if not any(text.strip() for _, text in texts):
            named = ", ".join(self.files)
            raise DataError(f"corpus is empty: {named!r} has no text; give --data.files a file with text")
        return sources, texts

    def _documents(self, texts: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str, bool]]]:
        """Cut texts into (document key, text, ends a file) triples."""
        mode = self.documents
        if mode == "auto":
            mode = "file" if len(texts) >= 10 else "paragraph"
        if mode == "file":
            return mode, [(name, text, True) for name, text in texts]
        docs = []
        for name, text in texts:
            pieces = [p for p in re.split(r"(?<=\n\n)", text) if p]
            docs += [(f"{name}#{i}", piece, i == len(pieces) - 1) for i, piece in enumerate(pieces)]
        return mode, docs

    def _split_documents(self, docs: list[tuple[str, str, bool]]) -> list[bool]:
        """Whether each document is held out for validation; both splits get at least one."""
        if len(docs) < 2:
            raise DataError(
                f"corpus has {len(docs)} document(s); splitting train/validation by document needs 2 or more "
                "(add files, or use --data.documents paragraph)"
            )
        if self.split == "tail":
            n_val = max(1, math.ceil(self.val_fraction * len(docs)))
            return [i >= len(docs) - n_val for i in range(len(docs))]
        scores = [int(sha256_bytes(f"{self.seed}:{key}".encode())[:12], 16) / 16**12 for key, _, _ in docs]
        held_out = [score < self.val_fraction for score in scores]
        if all(held_out) or not any(held_out):
            flip = min(range(len(docs)), key=scores.__getitem__)
            held_out = [False] * len(docs)
            held_out[flip] = True
        return held_out

    # -- tokenizing and packing ------------------------------------------------------------

    def _prepare(self) -> DataManifest:
        """Build (or load from cache) the tokenizer, the token streams and the manifest."""
        sources, texts = self._read_sources()
        mode, docs = self._documents(texts)
        held_out = self._split_documents(docs)
        train_texts = [text for (_, text, _), val in zip(docs, held_out, strict=True) if not val]
        all_texts = [text for _, text, _ in docs]
        key = {"sources": [s.sha256 for s in sources], "split": [self.split, self.seed, self.val_fraction, mode]}
        if self.tokenizer_file is not None:
            path = Path(self.tokenizer_file)
            if not path.is_file():
                raise DataError(f"tokenizer file not found: {self.tokenizer_file!r} (check --data.tokenizer_file)")
            self.tokenizer, tokenizer_digest = Tokenizer.from_file(str(path)), sha256_file(path)
        else:
            self.tokenizer, tokenizer_digest = cached_tokenizer(
                self.cache_dir, self.tokenizer_kind, self.requested_vocab_size, key,
                all_texts if self.tokenizer_kind == "char" else train_texts,
            )  # fmt: skip
        manifest = DataManifest(
            sources=tuple(sources), tokenizer_digest=tokenizer_digest, split_rule=self.split, split_seed=self.seed,
            val_fraction=self.val_fraction, documents=mode, block_size=self.block_size,
            sample_stride=self.sample_stride,
        )  # fmt: skip
        self._splits, counts = self._tokenize(manifest.inputs_digest(), docs, held_out)
        self._check_sizes()
        return dataclasses.replace(manifest, **counts)

    def _tokenize(
        self, inputs_digest: str, docs: list[tuple[str, str, bool]], held_out: list[bool]
    ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, int]]]:
        """Token streams per split, through an Arrow cache keyed by the manifest inputs."""
        cache = self.cache_dir / "corpora" / inputs_digest
        arrow = cache / "tokens.arrow"
        eot = self.tokenizer.token_to_id(END_OF_TEXT)
        datasets.disable_progress_bars()
        if (cache / "counts.json").exists():
            table = datasets.Dataset.from_file(str(arrow))
        else:
            cache.mkdir(parents=True, exist_ok=True)
            columns = {"text": [t for _, t, _ in docs], "eot": [e for _, _, e in docs], "val": held_out}
            table = datasets.Dataset.from_dict(columns).map(
                self._encode_batch,
                fn_kwargs={"eot": eot},
                batched=True,
                remove_columns=["text"],
                cache_file_name=str(arrow),
                new_fingerprint=inputs_digest,
            )
        arrow_table, splits = table.data.table, {}
        for name, is_val in (("train", False), ("val", True)):
            part = arrow_table.filter(pyarrow.compute.equal(arrow_table.column("val"), is_val))
            ids = part.column("ids").combine_chunks().flatten().to_numpy()
            splits[name] = torch.from_numpy(np.asarray(ids, dtype=np.int32).copy())
        counts = {
            "token_counts": {name: len(tokens) for name, tokens in splits.items()},
            "sample_counts": {
                "train": len(PackedTokens(splits["train"], self.block_size, self.sample_stride)),
                "val": len(PackedTokens(splits["val"], self.block_size, self.block_size)),
            },
        }
        atomic_write_json(cache / "counts.json", counts)
        return splits, counts

    def _encode_batch(self, batch: dict[str, list], eot: int) -> dict[str, list[list[int]]]:
        """Token ids per document; a document that ends a file is followed by the end-of-text token."""
        encodings = self.tokenizer.encode_batch(batch["text"])
        return {"ids": [e.ids + [eot] * ends for e, ends in zip(encodings, batch["eot"], strict=True)]}

    def _check_sizes(self) -> None:
        for name, tokens in self._splits.items():
            if len(tokens) < self.block_size + 1:
                raise DataError(
                    f"block_size {self.block_size} needs at least {self.block_size + 1} tokens per split, but the "
                    f"{name} split has {len(tokens)}; lower --data.block_size or add text"
                )

    # -- what the base serves and a run keeps ------------------------------------------------

    def _dataset(self, split: Split) -> PackedTokens:
        # Training windows start every sample_stride tokens; validation windows tile the split.
        stride = self.sample_stride if split == "train" else self.block_size
        return PackedTokens(self._splits[split], self.block_size, stride)

    def _describe_change(self, saved: dict[str, Any]) -> str:
        return DataManifest.from_json_dict(saved).describe_change(self.prepare())

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (trains or loads the tokenizer on first use)."""
        self.prepare()
        return self.tokenizer.get_vocab_size()

    def data_facts(self) -> DataFacts:
        return DataFacts(vocab_size=self.vocab_size, block_size=self.block_size)

    def tokenizer_json(self) -> str | None:
        """The tokenizer a run keeps as ``tokenizer.json`` (None before :meth:`prepare`)."""
        return self.tokenizer.to_str() if self.tokenizer is not None else None
