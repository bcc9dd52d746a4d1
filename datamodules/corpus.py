"""A replay-safe tokenized text corpus: files or the Python standard library, pinned by a manifest.

Flow: resolve sources -> read and digest every file -> cut into documents -> split by document
(train / validation never share one) -> train or load the tokenizer (cached by digest) ->
tokenize with ``datasets`` (Arrow cache keyed by the manifest) -> pack each split into one
token stream -> samples are windows of ``block_size + 1`` tokens every ``sample_stride`` tokens.

The token cache is bound to its contents: writing it records the sha256 of each split's packed
stream, and every load recomputes them; a cache that does not match (edited, truncated, swapped,
without its record) is rebuilt from the sources, never trained on. The same digests enter the
manifest (``token_digests``), so the data manifest digest commits to the tokens themselves.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from tokenizers import Tokenizer
from torch.utils.data import Dataset

from lit_psion.core import atomic_write_json, sha256_bytes
from lit_psion.core.contracts import DataFacts
from lit_psion.core.errors import DataConfigError, DataError, DataManifestMismatch
from lit_psion.core.files import decode_text, not_utf8
from lit_psion.core.layout import RunLayout
from lit_psion.core.manifest import SETTING_FLAGS, DataManifest, SourceFile
from lit_psion.datamodules.base import ReplayDataModule, Split, positive_integers
from lit_psion.datamodules.evaluation_text import trained_on_any_of
from lit_psion.datamodules.token_cache import (
    TOKEN_RECORD_FILE,
    TOKENS_FILE,
    TokenCacheMismatch,
    check_token_cache,
    load_token_cache,
    split_streams,
    spot_check,
    token_cache_hint,
    token_digest,
)
from lit_psion.datamodules.tokenizer import (
    END_OF_TEXT,
    TokenizerKind,
    cached_tokenizer,
    cached_tokenizer_hint,
    tokenizer_key,
    tokenizer_settings_hint,
    warn_of_unknown,
)

__all__ = ["CorpusDataModule", "DataConfigError", "DataManifestMismatch", "PackedTokens", "check_token_cache"]

BPE_MIN_VOCAB = 257
"""A byte-level BPE starts from 256 byte tokens plus the end-of-text token."""
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
        max_bytes: At most this many source bytes (``None``: no cap). Files are taken whole, in order,
            while the total stays within the cap; the first file that would pass it and every later
            one are left out. A file is never cut (the manifest's sha256 is the file's own), so a
            first file larger than the cap is refused with a DataError naming its size.
        tokenizer: ``bpe`` (byte-level BPE) or ``char`` (one token per character).
        vocab_size: BPE vocabulary size (``char`` takes the corpus's alphabet).
        block_size: Tokens of context per sample.
        batch_size: Samples per training batch.
        documents: ``file`` (each file is a document), ``paragraph`` (split at blank lines), or
            ``auto`` (files when there are at least 10, else paragraphs).
        split: ``hash`` (a seeded hash of each document decides) or ``tail`` (the last documents).
        val_fraction: Share of documents held out for validation.
        test_fraction: Share of documents held out for ``test`` (default 0: no test split, and ``test`` is
            refused). With ``tail``, the test documents are the last ones and validation's come before them.
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
    test_split_hint = ("its data_manifest has test_fraction 0; train a run with --data.test_fraction 0.1 to hold one "
                       "out (the split decides what is trained on, so it is set when a run starts)")  # fmt: skip

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
        test_fraction: float = 0.0,
        sample_stride: int | None = None,
        seed: int = 1337,
        cache_dir: str | None = None,
        num_workers: int = 0,
        tokenizer_file: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers, cache_dir=cache_dir)
        self.tokenizer_file = tokenizer_file
        self.files = [files] if isinstance(files, str) else list(files) if isinstance(files, list | tuple) else files
        self.max_bytes, self.tokenizer_kind, self.requested_vocab_size = max_bytes, tokenizer, vocab_size
        self.block_size, self.documents, self.split = block_size, documents, split
        self.val_fraction = val_fraction
        self.sample_stride = block_size if sample_stride is None else sample_stride  # 0 is refused, not the default
        self.test_fraction = test_fraction
        self.tokenizer: Tokenizer | None = None
        self._tokenizer_text: str | None = None
        self._splits: dict[str, torch.Tensor] = {}
        self._refuse_bad_settings(*self._setting_problems())

    def _setting_problems(self) -> list[str]:
        if not isinstance(self.files, list) or not all(isinstance(entry, str) for entry in self.files):
            problems = [f"files must be a path, a glob or 'stdlib' (or a list of them), got {self.files!r}"]
        elif not self.files:
            problems = ["files is empty; give --data.files a file, a glob or 'stdlib'"]
        else:
            problems = ["files holds an empty path ''; give a file, a glob or 'stdlib'"] if "" in self.files else []
        stride = {} if self.sample_stride == self.block_size else {"sample_stride": self.sample_stride}  # (said once)
        problems += positive_integers(block_size=self.block_size, vocab_size=self.requested_vocab_size, **stride)
        choices = (("tokenizer", self.tokenizer_kind, ("bpe", "char")), ("split", self.split, ("hash", "tail")),
                   ("documents", self.documents, ("auto", "file", "paragraph")))  # fmt: skip
        for name, value, allowed in choices:
            if value not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.tokenizer_kind == "bpe" and isinstance(self.requested_vocab_size, int) and \
                self.requested_vocab_size < BPE_MIN_VOCAB:
            problems.append(f"vocab_size must be >= {BPE_MIN_VOCAB} for bpe (256 bytes and the end-of-text token), "
                            f"got {self.requested_vocab_size!r}")  # fmt: skip
        if not _fraction(self.val_fraction) or not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if not _fraction(self.test_fraction) or not 0.0 <= self.test_fraction < 1.0:
            problems.append(f"test_fraction must be >= 0 and below 1, got {self.test_fraction!r}")
        elif _fraction(self.val_fraction) and 0 < self.val_fraction < 1 and self.val_fraction + self.test_fraction >= 1:
            problems.append(f"test_fraction must leave training documents: val_fraction {self.val_fraction!r} + "
                            f"test_fraction {self.test_fraction!r} must be below 1")
        if self.max_bytes is not None and (not isinstance(self.max_bytes, int) or self.max_bytes < 1):
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
            elif Path(entry).is_file():  # before the glob: a file may be named notes[1].txt
                paths.append((entry, Path(entry)))
            elif glob.has_magic(entry):
                matches = sorted(glob.glob(entry, recursive=True))
                files = [m for m in matches if Path(m).is_file()]
                if not files:
                    raise DataError(f"data glob matched no files: {entry!r} (check --data.files)")
                if odd := next((m for m in matches if not Path(m).is_file() and not Path(m).is_dir()), None):
                    what = "a broken symlink" if Path(odd).is_symlink() and not Path(odd).exists() else (
                        "not a regular file (a pipe, socket or device)")  # fmt: skip
                    raise DataError(f"data glob {entry!r} matched {odd!r}, {what}: its bytes cannot be pinned by "
                                    "digest; remove it or narrow the glob")  # fmt: skip
                paths += [(m, Path(m)) for m in files]
            elif Path(entry).is_dir():
                raise DataError(f"data file {entry!r} is a directory; give its files, e.g. --data.files "
                                f"'{entry.rstrip('/')}/**/*.txt' (quoted: the glob is expanded in order, here)")
            elif Path(entry).exists():  # a FIFO, a socket, a device: its bytes cannot be pinned by digest
                raise DataError(f"data file {entry!r} is not a regular file (a pipe, socket or device cannot be read "
                                "twice alike); save its content to a file and give that")  # fmt: skip
            else:
                where = "" if Path(entry).is_absolute() else f"; a relative path is read from {os.getcwd()!r}"
                raise DataError(f"data file not found: {entry!r} (check --data.files{where})")
        if odd := next((name for name, _ in paths if not_utf8(name)), None):
            raise DataError(f"data file {os.fsencode(odd)!r} has a name that is not UTF-8, which its manifest cannot "
                            "record; rename it, or leave it out of --data.files")  # (bytes Python keeps as surrogates)
        return paths

    def _read_sources(self) -> tuple[list[SourceFile], list[tuple[str, str]]]:
        """Digest the sources (whole files within ``max_bytes``) and return them with their texts.

        Raises:
            DataError: A first file larger than ``max_bytes``, or a source that is not UTF-8 text.
        """
        sources, texts, taken, seen, places = [], [], 0, {}, {}
        named = [entry for entry in self.files if entry != STDLIB and not glob.has_magic(entry)]
        paths = self._source_paths()
        for index, (name, path) in enumerate(paths):
            if not name.startswith(STDLIB + "/") and (first := places.get(path.resolve())) is not None:
                raise DataError(f"data file {name!r} is given twice ({first!r} and {name!r} are one file, through "
                                "--data.files entries that overlap or a link a glob followed); give each file once "
                                "(narrow the glob, or move the link out of its way)")  # fmt: skip
            places[path.resolve()] = name
            try:
                data = path.read_bytes()
            except OSError as error:
                raise DataError(f"data file {name!r} cannot be read ({error.strerror or error}); fix its permissions "
                                "or the device, or leave it out of --data.files") from None  # fmt: skip
            if self.max_bytes is not None and taken + len(data) > self.max_bytes:
                if not sources:
                    raise DataError(
                        f"data file {name!r} alone is {len(data)} bytes, over max_bytes {self.max_bytes}; files are "
                        "taken whole, so raise --data.max_bytes, set it to null, or give a smaller file"
                    )
                if left := [n for n, _ in paths[index:] if n in named]:  # a glob's or the stdlib's rest: as documented
                    print(f"lit_psion: warning: max_bytes {self.max_bytes} leaves out {len(left)} data file(s) given "
                          f"by name ({', '.join(map(repr, left[:3]))}); raise --data.max_bytes or set it to null to "
                          "train on them", file=sys.stderr)  # fmt: skip
                break
            taken += len(data)
            digest = sha256_bytes(data)
            copied = seen.get(digest, STDLIB + "/")  # the stdlib holds copies of its own (empty __init__.py and more)
            if not name.startswith(STDLIB + "/") and not copied.startswith(STDLIB + "/") and data.strip():
                raise DataError(f"data files {seen[digest]!r} and {name!r} hold the same text (sha256 "
                                f"{digest[:16]}...): a copy puts validation text in training; give each text once")
            seen.setdefault(digest, name)
            sources.append(SourceFile(path=name, sha256=digest, bytes=len(data)))
            texts.append((name, decode_text(name, data)))
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
            pieces = [p for p in re.split(r"(?<=\n\n)|(?<=\r\n\r\n)|(?<=\r\r)", text) if p]  # LF, CRLF, CR blank lines
            docs += [(f"{name}#{i}", piece, i == len(pieces) - 1) for i, piece in enumerate(pieces)]
        return mode, docs

    def _split_documents(self, docs: list[tuple[str, str, bool]], mode: str = "file") -> list[Split]:
        """The split of each document: ``train``, ``val``, or ``test`` (with ``test_fraction``); every split in use
        gets at least one document, and training keeps at least one."""
        splits: tuple[Split, ...] = ("train", "val", "test") if self.test_fraction else ("train", "val")
        if len(docs) < len(splits):
            raise DataError(
                f"corpus has {len(docs)} document(s); splitting train/validation{'/test' * (len(splits) == 3)} by "
                f"document needs {len(splits)} or more ("
                + ("add files, or use --data.documents paragraph)" if mode == "file" else
                   "add text: documents are split at blank lines, and it has too few)")
            )  # fmt: skip
        if self.split == "tail":  # the last documents: test last, validation before it; training keeps one
            n = len(docs)
            n_test = min(max(1, math.ceil(self.test_fraction * n)), n - 2) if self.test_fraction else 0
            n_val = max(1, min(math.ceil(self.val_fraction * n), n - n_test - 1))
            return ["test" if i >= n - n_test else "val" if i >= n - n_test - n_val else "train" for i in range(n)]
        scores = [int(sha256_bytes(f"{self.seed}:{key}".encode())[:12], 16) / 16**12 for key, _, _ in docs]
        cut = self.val_fraction + self.test_fraction
        assigned: list[Split] = ["val" if x < self.val_fraction else "test" if x < cut else "train" for x in scores]
        if not self.test_fraction and set(assigned) != {"train", "val"}:  # as it always was without a test split
            order = sorted(range(len(docs)), key=scores.__getitem__)
            assigned = ["train"] * len(docs)
            assigned[order[0]] = "val"
            return assigned
        # A split left empty by few documents takes the one document whose score is nearest its range,
        # from the largest other split; the other documents keep what the hash gave them.
        ranges = {"val": (0.0, self.val_fraction), "test": (self.val_fraction, cut), "train": (cut, 1.0)}
        for split in splits:
            if split in assigned:
                continue
            low, high = ranges[split]
            donor = max(splits, key=assigned.count)  # the first largest, in a fixed order
            candidates = [i for i in range(len(docs)) if assigned[i] == donor]
            assigned[min(candidates, key=lambda i: max(low - scores[i], scores[i] - high, 0.0))] = split
        return assigned

    # -- tokenizing and packing ------------------------------------------------------------

    def _prepare(self) -> DataManifest:
        """Build (or load from cache) the tokenizer, the token streams and the manifest."""
        sources, texts = self._read_sources()
        mode, docs = self._documents(texts)
        held_out = self._split_documents(docs, mode)
        train_texts = [text for (_, text, _), split in zip(docs, held_out, strict=True) if split == "train"]
        all_texts = [text for _, text, _ in docs]
        draft = DataManifest(
            sources=tuple(sources), tokenizer_digest="", split_rule=self.split, split_seed=self.seed,
            val_fraction=self.val_fraction, documents=mode, block_size=self.block_size,
            sample_stride=self.sample_stride, test_fraction=self.test_fraction,
        )  # fmt: skip
        if self.tokenizer_file is not None:
            path = Path(self.tokenizer_file)
            if not path.is_file():
                what = "is a directory" if path.is_dir() else "is not a file" if path.exists() else "not found"
                raise DataError(f"tokenizer file {self.tokenizer_file!r} {what} (check --data.tokenizer_file: a "
                                "tokenizer.json, such as a run's)")  # fmt: skip
            raw = path.read_bytes()  # one read: the run keeps these very bytes as tokenizer.json, under this digest
            try:
                self.tokenizer, tokenizer_digest = Tokenizer.from_str(raw.decode("utf-8")), sha256_bytes(raw)
            except Exception as error:  # tokenizers raises its own exception type for a malformed file
                raise DataError(f"tokenizer file {self.tokenizer_file!r} is not a tokenizers JSON file ({error}); "
                                "give one written by tokenizers' Tokenizer.save") from error  # fmt: skip
            if self.tokenizer.token_to_id(END_OF_TEXT) is None:
                raise DataError(f"tokenizer file {self.tokenizer_file!r} has no {END_OF_TEXT!r} token, which ends "
                                "every document; give one lit_psion trained (a run's tokenizer.json), or add the "
                                "token to it")  # fmt: skip
            self._tokenizer_text = raw.decode("utf-8")
        else:
            self.tokenizer, tokenizer_digest = cached_tokenizer(
                self.cache_dir, self.tokenizer_kind, self.requested_vocab_size, tokenizer_key(draft),
                all_texts if self.tokenizer_kind == "char" else train_texts,
            )  # fmt: skip
        manifest = dataclasses.replace(draft, tokenizer_digest=tokenizer_digest)
        streams, token_digests = self._tokenize(manifest.inputs_digest(), docs, held_out)
        warn_of_unknown(self.tokenizer, streams, self.tokenizer_file)
        self._splits = {name: torch.from_numpy(tokens) for name, tokens in streams.items()}
        self._check_sizes()
        return dataclasses.replace(
            manifest,
            token_counts={name: len(tokens) for name, tokens in self._splits.items()},
            sample_counts={name: len(self._dataset(name)) for name in self._splits},
            token_digests=token_digests,
        )

    def _tokenize(
        self, inputs_digest: str, docs: list[tuple[str, str, bool]], held_out: list[Split]
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Token streams per split and their digests, through a token cache keyed by the manifest inputs. A cache that
        does not match its record, or its sources where spot-checked, is rebuilt (a warning line), never trained on."""
        cache = self.cache_dir / "corpora" / inputs_digest
        try:
            if (cached := load_token_cache(cache, inputs_digest)) is not None:
                return spot_check(cached, self.tokenizer, docs, held_out, self._encode_batch)
        except TokenCacheMismatch as mismatch:
            print(f"lit_psion: warning: token cache {str(cache)!r} {mismatch}; rebuilding it from the sources",
                  file=sys.stderr)  # fmt: skip
        return self._build_token_cache(cache, inputs_digest, docs, held_out)

    def _build_token_cache(
        self, cache: Path, inputs_digest: str, docs: list[tuple[str, str, bool]], held_out: list[Split]
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Tokenize into a staging directory, record the token digests of what it holds, move it into place."""
        import datasets  # only to build a cache (~0.8 s to import): a warm cache is read with pyarrow alone

        datasets.disable_progress_bars()
        staging = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        columns = {"text": [t for _, t, _ in docs], "eot": [e for _, _, e in docs],
                   "val": [split == "val" for split in held_out]}  # fmt: skip
        if "test" in held_out:  # a cache without a test split keeps the layout it always had
            columns["test"] = [split == "test" for split in held_out]
        try:
            datasets.Dataset.from_dict(columns).map(
                self._encode_batch,
                fn_kwargs={"eot": self.tokenizer.token_to_id(END_OF_TEXT)},
                batched=True,
                remove_columns=["text"],
                cache_file_name=str(staging / TOKENS_FILE),
                new_fingerprint=inputs_digest,
                load_from_cache_file=False,
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # no half-built cache left behind
            raise
        streams = split_streams(staging / TOKENS_FILE)  # what a later load reads is what is recorded
        digests = {name: token_digest(tokens) for name, tokens in streams.items()}
        atomic_write_json(staging / TOKEN_RECORD_FILE, {"inputs_digest": inputs_digest, "token_digests": digests})
        shutil.rmtree(cache, ignore_errors=True)
        try:
            staging.rename(cache)
        except OSError:  # another process put a cache in place first; ours is in memory already
            shutil.rmtree(staging, ignore_errors=True)
        return streams, digests

    def _encode_batch(self, batch: dict[str, list], eot: int) -> dict[str, list[list[int]]]:
        """Token ids per document; a document that ends a file is followed by the end-of-text token."""
        encodings = self.tokenizer.encode_batch(batch["text"])
        return {"ids": [e.ids + [eot] * ends for e, ends in zip(encodings, batch["eot"], strict=True)]}

    def _check_sizes(self) -> None:
        """Refuse a split shorter than one sample."""
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

    def has_test_split(self) -> bool:
        return self.test_fraction > 0

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As :meth:`ReplayDataModule.load_state_dict`, except that ``validate``, ``test`` and ``predict`` may read
        a checkpoint on other text (none of the sources it trained on, by content or by path: a file it trained on
        and edited since still holds text it trained on) tokenized with the run's tokenizer. (An evaluation writes
        nothing into the run, so no receipt records that data: its scores are the command's output alone.)

        Raises:
            DataManifestMismatch: A fit on other data or settings; an evaluation on text the run trained on under
                other settings (its split could hold out documents it trained on), or with another tokenizer.
        """
        saved, fn = state_dict.get("manifest"), self.trainer.state.fn if self.trainer is not None else None
        if saved is None or fn in (None, TrainerFn.FITTING) or trained_on_any_of(
                DataManifest.from_json_dict(saved), self.prepare(), self.trainer.ckpt_path):  # fmt: skip
            return super().load_state_dict(state_dict)
        return None

    def change_before_preparing(self, saved: dict[str, Any]) -> str | None:
        try:
            trained, (sources, texts) = DataManifest.from_json_dict(saved), self._read_sources()
            settings = {field: getattr(self, name) for field, name in SETTING_FLAGS.items() if field != "documents"}
            given = dataclasses.replace(trained, sources=tuple(sources), **settings,
                                        documents=self._documents(texts)[0])  # fmt: skip
        except (DataError, TypeError, KeyError, ValueError):
            return None
        return None if (change := trained.describe_change(given)) == "no difference" else change

    def _describe_change(self, saved: dict[str, Any]) -> str:
        return DataManifest.from_json_dict(saved).describe_change(self.prepare())

    def _restore_hint(self, saved: dict[str, Any]) -> str:
        contexts = [getattr(callback, "run_context", None) for callback in getattr(self.trainer, "callbacks", [])]
        start = next((context.resume_from for context in contexts if getattr(context, "resume_from", None)), None)
        run = RunLayout.of(Path(start).parent.parent) if start else None
        trained, current = DataManifest.from_json_dict(saved), self.prepare()
        kind, size = self.tokenizer_kind, self.requested_vocab_size
        cached = run is not None and self.tokenizer_file is None and (  # the run's own tokenizer, from the cache
            tokenizer_settings_hint(run.config, kind, size)
            or cached_tokenizer_hint(self.cache_dir, kind, size, trained, current, start))
        return (cached or token_cache_hint(self.cache_dir / "corpora", trained, current)
                or trained.restore_hint(current, f"--config {run.config}" if run else "its own config")
                or super()._restore_hint(saved))  # fmt: skip

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (trains or loads the tokenizer on first use)."""
        self.prepare()
        return self.tokenizer.get_vocab_size()

    def data_facts(self) -> DataFacts:
        manifest = self.prepare()  # the tokenizer is trained (or loaded) by now
        return DataFacts(vocab_size=self.vocab_size, block_size=self.block_size,
                         tokenizer_digest=manifest.tokenizer_digest)  # fmt: skip

    def tokenizer_json(self) -> str | None:
        """The tokenizer a run keeps as ``tokenizer.json`` (None before :meth:`prepare`)."""
        if self.tokenizer is None:
            return None
        return self._tokenizer_text or self.tokenizer.to_str()


def _fraction(value: Any) -> bool:
    """Whether ``value`` is a number a fraction can be compared as (not null, a word or a boolean)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value
