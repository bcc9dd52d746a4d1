"""Tokenizers trained with the `tokenizers` library and cached by digest.

Two kinds, one file format (tokenizer.json) so both are digested the same way:
``bpe`` is byte-level BPE; ``char`` is one token per character (WordLevel over single characters).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lit_psion.core import atomic_write_text, sha256_bytes, sha256_json
from lit_psion.core.layout import TOKENIZER_FILE

TokenizerKind = Literal["bpe", "char"]
END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<|unk|>"
FORMAT_VERSION = 1
"""Part of every cache key: bump when the way a tokenizer is built changes."""
DIGEST_RECORD = "tokenizer.sha256"
"""Beside each cached tokenizer.json: the sha256 it had when it was trained."""


def train_tokenizer(kind: TokenizerKind, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a tokenizer of ``kind`` on ``texts``; ``vocab_size`` caps BPE (char takes what the text has)."""
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[END_OF_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return tokenizer
    if kind == "char":
        alphabet = sorted(set().union(*(set(text) for text in texts)))
        vocab = {token: i for i, token in enumerate([END_OF_TEXT, UNKNOWN, *alphabet])}
        tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNKNOWN))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tokenizer.decoder = decoders.Fuse()
        tokenizer.add_special_tokens([END_OF_TEXT, UNKNOWN])  # decode() skips them
        return tokenizer
    raise ValueError(f"tokenizer must be 'bpe' or 'char', got {kind!r}")


def cached_tokenizer(
    cache_dir: Path, kind: TokenizerKind, vocab_size: int, key: dict, texts: Iterable[str]
) -> tuple[Tokenizer, str]:
    """Load the tokenizer trained for ``key`` from the cache, or train and cache it.

    The cache is shared by runs, so an entry is trusted only if it loads and hashes to the digest recorded when it
    was trained (:data:`DIGEST_RECORD`, written first): one edited in place would otherwise train a new run on
    other token ids. Any other entry is moved aside (a newer `tokenizers` may have written it) and trained again.

    Returns:
        The tokenizer and the sha256 of its tokenizer.json.
    """
    path = tokenizer_cache_path(cache_dir, kind, vocab_size, key)
    if (text := trusted_entry(path)) is None:
        text = train_tokenizer(kind, texts, vocab_size).to_str()
        keep_recorded(path, text)
    return Tokenizer.from_str(text), sha256_bytes(text.encode())


def tokenizer_cache_path(cache_dir: Path, kind: TokenizerKind, vocab_size: int, key: dict) -> Path:
    """Where :func:`cached_tokenizer` keeps the tokenizer trained for ``key``."""
    digest = sha256_json({"kind": kind, "vocab_size": vocab_size, "format": FORMAT_VERSION, **key})
    return cache_dir / "tokenizers" / digest / TOKENIZER_FILE


def tokenizer_key(manifest: Any) -> dict:
    """What a corpus's trained tokenizer is cached by: everything that decides the text it is trained on (the
    :class:`~lit_psion.core.manifest.DataManifest` ``manifest``'s sources' digests and split settings, and under the
    ``hash`` split the sources' paths too, which each document's split is hashed from)."""
    key = {"sources": [s.sha256 for s in manifest.sources],
           "split": [manifest.split_rule, manifest.split_seed, manifest.val_fraction, manifest.documents]}  # fmt: skip
    if manifest.test_fraction:  # the key of a corpus without a test split is what it was before they existed
        key["split"].append(manifest.test_fraction)
    if manifest.split_rule == "hash":  # the same bytes under other paths are split otherwise
        key["paths"] = [s.path for s in manifest.sources]
    return key


def cached_tokenizer_hint(cache_dir: Path, kind: TokenizerKind, vocab_size: int, trained: Any, current: Any,
                          checkpoint: str | Path) -> str | None:  # fmt: skip
    """The fix for a resume from ``checkpoint`` refused for its data when the text and settings (data manifests
    ``trained`` and ``current``) are the run's and only the shared tokenizer cache gave another tokenizer (an entry
    rewritten with its digest record, or trained by another `tokenizers`), while the run's own tokenizer.json is the
    one it trained with; None otherwise."""
    own = Path(checkpoint).parent.parent / TOKENIZER_FILE
    same_text = {s.sha256 for s in trained.sources} == {s.sha256 for s in current.sources}
    if (not same_text or trained.settings_to_restore(current) or trained.tokenizer_digest == current.tokenizer_digest
            or not own.is_file() or sha256_bytes(own.read_bytes()) != trained.tokenizer_digest):  # fmt: skip
        return None
    cached = tokenizer_cache_path(cache_dir, kind, vocab_size, tokenizer_key(current)).parent
    return (f"the text and settings are the run's, but the tokenizer cached in {str(cached)!r} is not the one it "
            f"trained with (its own tokenizer.json is): give --data.tokenizer_file {own}, or remove that cache entry "
            "to train it again")  # fmt: skip


def tokenizer_settings_hint(run_config: Path, kind: TokenizerKind, vocab_size: int) -> str | None:
    """The fix for a resume refused for its data when the run (its ``config.yaml``, ``run_config``) trained its own
    tokenizer of another kind or (BPE) vocabulary size than this fit asks for: the data manifest records the
    tokenizer's digest, not those settings, so the refusal would otherwise blame the text or the cache."""
    import yaml

    try:
        config = yaml.safe_load(run_config.read_text(encoding="utf-8"))
        data = config["data"].get("init_args", config["data"])
        theirs, their_size = data.get("tokenizer", "bpe"), data.get("vocab_size")
    except (OSError, ValueError, yaml.YAMLError, RecursionError, TypeError, KeyError, AttributeError):
        return None
    if data.get("tokenizer_file") is not None or theirs not in ("bpe", "char"):
        return None
    if theirs == kind and (kind == "char" or their_size == vocab_size):
        return None
    trained, asked = _tokenizer_flags(theirs, their_size), _tokenizer_flags(kind, vocab_size)
    return (f"the run trained its tokenizer as {trained}, this fit asks for {asked}: the same text would be other "
            f"tokens; give {trained} to continue it, or start a new run without --ckpt_path")


def _tokenizer_flags(kind: str, vocab_size: Any) -> str:
    return f"--data.tokenizer {kind}" + (f" --data.vocab_size {vocab_size}" if kind == "bpe" else "")


EVENT_TOKENIZER_KEY = ("format", "settings", "seed", "vocab_size", "traces")
"""The event-trace settings an event tokenizer is cached by; a MOSAIC run's data manifest records each of them."""


def event_tokenizer_path(record: dict, cache_dir: Path) -> Path:
    """Where the event tokenizer of the settings in ``record`` (a dict holding :data:`EVENT_TOKENIZER_KEY`) is cached
    under ``cache_dir``."""
    key = {name: record.get(name) for name in EVENT_TOKENIZER_KEY}
    return cache_dir / "event_tokenizers" / sha256_json(key) / TOKENIZER_FILE


def trusted_entry(path: Path) -> str | None:
    """The cached tokenizer at ``path`` if it loads and hashes to the digest recorded when it was trained
    (:data:`DIGEST_RECORD`, beside it); otherwise None, with any entry there moved aside and one line saying why."""
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        if not path.is_file():  # a directory (or a dangling link) in its place: moved aside, never written into
            raise OSError("not a regular file")
        data = path.read_bytes()
        text = data.decode("utf-8")
        Tokenizer.from_str(text)
    except Exception as error:  # tokenizers raises a bare Exception for a file it cannot read
        reason, problem = str(error).splitlines()[0] if str(error) else type(error).__name__, "unreadable"
    else:
        digest, recorded = sha256_bytes(data), _recorded_digest(path.with_name(DIGEST_RECORD))
        if recorded == digest:
            return text
        problem = "unrecorded" if recorded is None else "altered"
        reason = "no digest record" if recorded is None else f"sha256 {digest[:16]}..., recorded {recorded[:16]}..."
    aside = path.with_name(f"{path.name}.{problem}-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):  # another rank may have moved it already
        path.replace(aside)
    print(f"lit_psion: the cached tokenizer {path} is {problem} ({reason}); kept as {aside.name}, training it again",
          file=sys.stderr)  # fmt: skip
    return None


def trusted_digest(path: Path) -> str | None:
    """The digest recorded beside the cached tokenizer at ``path`` when it was trained (None: no readable record)."""
    return _recorded_digest(path.with_name(DIGEST_RECORD))


def keep_recorded(path: Path, text: str) -> None:
    """Cache a trained tokenizer's ``text`` at ``path``, its digest recorded first (an entry is never unrecorded)."""
    atomic_write_text(path.with_name(DIGEST_RECORD), sha256_bytes(text.encode()) + "\n")
    atomic_write_text(path, text)


def _recorded_digest(record: Path) -> str | None:
    try:
        text = record.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


UNKNOWN_WARNING = 0.01
"""The share of a corpus's tokens that are the unknown token above which a given tokenizer is warned about."""


def warn_of_unknown(tokenizer: Tokenizer, streams: dict[str, object], tokenizer_file: str | None) -> None:
    """Warn (once, on the first rank of a node) when a given tokenizer (``--data.tokenizer_file``, an evaluation's or
    an adapter's) reads much of the data as its unknown token: characters it never saw, which the model then trains
    or is measured on as one token, in silence."""
    unknown = tokenizer.token_to_id(UNKNOWN)
    if tokenizer_file is None or unknown is None or int(os.environ.get("LOCAL_RANK") or 0) != 0:
        return
    total = sum(len(tokens) for tokens in streams.values())  # type: ignore[arg-type]
    found = sum(int((tokens == unknown).sum()) for tokens in streams.values())  # type: ignore[union-attr]
    if total and found / total > UNKNOWN_WARNING:
        print(f"lit_psion: warning: {found / total:.0%} of the data's tokens are unknown to {tokenizer_file!r} "
              "(characters it never saw, each read as one unknown token): the model trains on, or is measured on, "
              "that one token; give text in the tokenizer's alphabet, or another tokenizer",
              file=sys.stderr)  # fmt: skip
