"""The data manifest: what a run's data is, pinned by digest (seed 004 "replay-safe data")."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from lit_psion.core.digest import sha256_json
from lit_psion.core.errors import DataManifestMismatch
from lit_psion.core.files import read_json
from lit_psion.core.layout import RunLayout

PACKING_POLICY_VERSION = 1
"""Bump when the way documents become training samples changes (the manifest digest changes with it)."""
DOCUMENT_RULES_VERSION = 2
"""Bump when the way a source's text is cut into documents changes. It keys the token cache only (not the manifest,
so a run's resume is refused only where its tokens did change, by their digests): a cache built under other rules
is never read as this one's. 2: blank lines in CR-only text end a paragraph (under 1 each such file was one)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SourceFile:
    path: str
    """The path as given (or, for the stdlib source, relative to the standard library)."""
    sha256: str
    bytes: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DataManifest:
    """Every input that decides which token lands in which sample, and the resulting counts."""

    sources: tuple[SourceFile, ...]
    tokenizer_digest: str
    split_rule: str
    split_seed: int
    val_fraction: float
    documents: str
    block_size: int
    sample_stride: int
    packing_policy_version: int = PACKING_POLICY_VERSION
    test_fraction: float = 0.0
    """The share of documents held out for ``test`` (0: no test split). Left out of the JSON record when 0,
    so a manifest without a test split has the digest it had before test splits existed."""
    token_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    sample_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    token_digests: dict[str, str] = dataclasses.field(default_factory=dict)
    """Per split, the sha256 of its packed token stream (little-endian int32): what training reads.

    Part of the digest, so the data manifest digest that run.json, every checkpoint and the receipts
    record commits to the tokens themselves, not only to the inputs that should produce them."""

    def to_json_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        if not self.test_fraction:
            del record["test_fraction"]
        return record

    @classmethod
    def from_json_dict(cls, record: dict[str, Any]) -> DataManifest:
        record = dict(record)
        record.pop("digest", None)
        record["sources"] = tuple(SourceFile(**source) for source in record["sources"])
        return cls(**record)

    @property
    def digest(self) -> str:
        return sha256_json(self.to_json_dict())

    def inputs_digest(self) -> str:
        """The digest of everything known before tokenizing, and of the rules that cut documents (the token cache
        key)."""
        record = self.to_json_dict()
        for outcome in _TOKENIZED_FIELDS:
            record.pop(outcome)
        return sha256_json({**record, "document_rules_version": DOCUMENT_RULES_VERSION})

    def describe_change(self, other: DataManifest) -> str:
        """Say in one line what differs between this manifest and ``other`` (this one is the old one)."""
        old = {s.path: s for s in self.sources}
        new = {s.path: s for s in other.sources}
        changes = []
        renamed = {path: next(p for p in new.keys() - old.keys() if new[p].sha256 == old[path].sha256)
                   for path in sorted(old.keys() - new.keys())
                   if any(new[p].sha256 == old[path].sha256 for p in new.keys() - old.keys())}  # fmt: skip
        if renamed:  # the same bytes under another spelling (./a.txt for a.txt, an absolute path, a moved file)
            changes.append("files named otherwise: " + ", ".join(f"{after!r} holds what {before!r} held (give "
                                                                f"{before!r}{_from_where(before)})"
                                                                for before, after in renamed.items()))  # fmt: skip
            old = {path: source for path, source in old.items() if path not in renamed}
            new = {path: source for path, source in new.items() if path not in renamed.values()}
        if removed := sorted(old.keys() - new.keys()):
            changes.append(f"files removed: {_first(removed)}")
        if added := sorted(new.keys() - old.keys()):
            changes.append(f"files added: {_first(added)}")
        if edited := sorted(p for p in old.keys() & new.keys() if old[p].sha256 != new[p].sha256):
            changes.append(f"files changed: {_first(edited)}")
        order, given = [source.path for source in self.sources], [source.path for source in other.sources]
        if sorted(order) == sorted(given) and given != order and not edited and not renamed:
            changes.append(f"files in another order (the run read them as {', '.join(map(repr, order[:4]))}"
                           f"{', ...' if len(order) > 4 else ''}: give them in that order)")  # fmt: skip
        if changed := sorted(k for k in self.token_digests.keys() | other.token_digests.keys()
                             if self.token_digests.get(k) != other.token_digests.get(k)):  # fmt: skip
            changes.append(f"token content changed ({', '.join(changed)})")
        settings = [f"{name}: {getattr(self, name)!r} -> {getattr(other, name)!r}" for name in SETTING_FLAGS
                    if getattr(self, name) != getattr(other, name)]  # fmt: skip
        if settings:  # what the tokens and counts follow from: say it alone
            return "; ".join(settings + [change for change in changes if change.startswith("files")])
        for field in dataclasses.fields(self):
            if field.name in ("sources", "token_digests"):
                continue
            before, after = getattr(self, field.name), getattr(other, field.name)
            if isinstance(before, dict) and isinstance(after, dict):  # counts per split: only those that differ
                keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
                before, after = {k: before.get(k) for k in keys}, {k: after.get(k) for k in keys}
            if before != after:
                changes.append(f"{field.name}: {_brief(before)} -> {_brief(after)}")
        return "; ".join(changes) or "no difference"

    def restore_hint(self, other: DataManifest, own_config: str) -> str | None:
        """How to give a checkpoint trained on this manifest's data its data again when ``other``'s was given: when
        the two share no file, the text as it was where the files were read again (they changed in place), else
        its own config (``own_config``: another preset's run, whose settings alone would not do); otherwise the
        flags of the settings that differ; None when neither helps."""
        if not {source.sha256 for source in self.sources} & {source.sha256 for source in other.sources}:
            shown = repr(self.sources[0].path) + (" and more" if len(self.sources) > 1 else "") if self.sources else ""
            in_place = bool(self.sources) and {s.path for s in self.sources} == {s.path for s in other.sources}
            how = "restore that text as it was" if in_place else f"continue it with {own_config}"
            return f"the run trained on other text ({shown}): {how}, or start a new run without --ckpt_path"
        if flags := self.settings_to_restore(other):
            return f"give the settings it was trained with ({' '.join(flags)})"
        return None

    def settings_to_restore(self, other: DataManifest) -> list[str]:
        """The ``--data.*`` flags that give ``other``'s data this manifest's settings again (empty: the settings
        are the same; the files or the tokenizer differ)."""
        return [f"--data.{flag} {getattr(self, name)}" for name, flag in SETTING_FLAGS.items()
                if getattr(self, name) != getattr(other, name)]  # fmt: skip


SETTING_FLAGS = {"split_rule": "split", "split_seed": "seed", "val_fraction": "val_fraction", "documents": "documents",
                 "block_size": "block_size", "sample_stride": "sample_stride", "test_fraction": "test_fraction"}
"""The manifest's settings and the CorpusDataModule arguments that set them."""

_TOKENIZED_FIELDS = ("token_counts", "sample_counts", "token_digests")
"""What tokenizing produces (left out of :meth:`DataManifest.inputs_digest`)."""


def _brief(value: object) -> str:
    """``value`` for a one-line message: a sha256 digest as its first 16 hex digits."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return repr(f"{value[:16]}...")
    return repr(value)


def _from_where(path: str) -> str:
    """For a recorded relative path not found from here: where it is read from (the run recorded it as given)."""
    if Path(path).is_absolute() or Path(path).exists():
        return ""
    return f", from the directory the run's fit ran in: it is relative, and {os.getcwd()!r} holds no such file"


def _first(paths: list[str], limit: int = 3) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" (+{len(paths) - limit} more)" if len(paths) > limit else "")


@dataclasses.dataclass(frozen=True)
class RecordManifest:
    """The manifest of generated data: the generator's settings and counts, as one JSON record."""

    record: dict[str, Any]

    @property
    def digest(self) -> str:
        return sha256_json(self.record)

    def to_json_dict(self) -> dict[str, Any]:
        return self.record

    def changed_keys(self, saved: dict[str, Any]) -> list[str]:
        """The top-level keys whose values differ from a saved record."""
        return sorted(k for k in set(saved) | set(self.record) if saved.get(k) != self.record.get(k))


def change_since(recorded: Path, current: Any) -> str:
    """``"; files changed: ..."`` (and added, removed, named otherwise) between the corpus manifest a run recorded
    (its ``data_manifest.json``) and ``current``, for a refusal to say; empty when either is not a corpus's or the
    record cannot be read."""
    try:
        trained = DataManifest.from_json_dict(json.loads(recorded.read_bytes()))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return ""
    if not isinstance(current, DataManifest):
        return ""
    files = [part for part in trained.describe_change(current).split("; ") if part.startswith("files")]
    return f"; {'; '.join(files)}" if files else ""

def data_builds_another_model(checkpoint: Any, current: Any) -> DataManifestMismatch:
    """The refusal of data whose tokenizer builds another model than ``checkpoint``'s (a vocabulary from other text),
    naming what changed and the fix that works: a file of a path the run trained on is held to its content, so for a
    changed one the run's tokenizer alone would be refused again."""
    run = RunLayout.of(checkpoint.path.parent.parent)
    since = change_since(run.data_manifest, current)
    fix = ("restore the changed file the run trained on, or evaluate other text under another path with the run's "
           "tokenizer" if "files changed:" in since else "evaluate it on its data, or with the run's tokenizer")
    return DataManifestMismatch(f"checkpoint {checkpoint.path.name} was trained on data manifest "
                                f"{checkpoint.manifest.data_manifest_digest[:16]}..., and this config's data "
                                f"({current.digest[:16]}...) builds another model from the same settings (its "
                                f"tokenizer sets the vocabulary{since}); {fix}: --data.tokenizer_file {run.tokenizer}")


def read_data_manifest(path: Path) -> tuple[dict[str, Any], DataManifest | None, str]:
    """The data manifest file at ``path``: its record, the corpus manifest it holds (None for generated data, MOSAIC
    or graph core, digested as it stands) and the digest of its content, recomputed.

    Raises:
        OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError: it cannot be read as one.
    """
    payload = read_json(path)
    if not isinstance(payload, dict):
        raise TypeError(f"a JSON {type(payload).__name__}, not an object")
    manifest = DataManifest.from_json_dict(payload) if "sources" in payload else None
    stands = {key: value for key, value in payload.items() if key != "digest"}
    return payload, manifest, manifest.digest if manifest is not None else sha256_json(stands)
