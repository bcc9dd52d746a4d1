"""The token cache of a tokenized corpus, read and checked without the corpus stack (``doctor`` uses it).

A cache directory (``<cache_dir>/corpora/<inputs digest>/``) holds ``tokens.arrow`` (the tokenized
documents, an Arrow IPC stream written by ``datasets``) and ``token_digests.json`` (the inputs digest it
was built for and each split's token digest). The inputs digest covers the manifest's inputs and the
version of the rules that cut text into documents (``DOCUMENT_RULES_VERSION``), so a cache built under
older rules is never read. Only numpy and pyarrow are imported here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow
import pyarrow.ipc

from lit_psion.core import read_json
from lit_psion.core.errors import DataError
from lit_psion.core.manifest import DataManifest
from lit_psion.datamodules.tokenizer import END_OF_TEXT

TOKENS_FILE = "tokens.arrow"
"""The tokenized documents in a token cache directory (``<cache_dir>/corpora/<inputs digest>/``)."""
TOKEN_RECORD_FILE = "token_digests.json"
"""The cache's record of what it holds: the inputs digest it was built for and each split's token digest."""


def token_digest(tokens: np.ndarray) -> str:
    """The sha256 of a packed token stream as little-endian int32 (what training reads)."""
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i4").data).hexdigest()


class TokenCacheMismatch(Exception):
    """A token cache that is not what its record says (internal: the cache is rebuilt, never trained on)."""


def default_cache_dir(cache_dir: str | None) -> Path:
    """``cache_dir``, else ``$LIT_PSION_CACHE``, else ``~/.cache/lit_psion``."""
    return Path(cache_dir or os.environ.get("LIT_PSION_CACHE") or Path.home() / ".cache" / "lit_psion")


def split_streams(arrow: Path) -> dict[str, np.ndarray]:
    """Each split's packed token stream (int32) from a tokenized Arrow file (``test`` only if it has that column).

    Read straight from the Arrow buffers (pyarrow's ``to_numpy`` and its compute kernels cost ~0.3 s
    to load, more than the read): every document's ids in order, each sent to its split.
    """
    with pyarrow.memory_map(str(arrow)) as source:  # the Arrow IPC stream datasets wrote
        table = pyarrow.ipc.open_stream(source).read_all()
    ids = table.column("ids").combine_chunks()
    if not pyarrow.types.is_list(ids.type) or ids.type.value_type != pyarrow.int64() or ids.null_count:
        raise ValueError(f"ids column is {ids.type} with {ids.null_count} nulls, not a list<int64> without nulls")
    values = ids.flatten()
    if values.null_count:
        raise ValueError(f"ids column holds {values.null_count} null token ids")
    tokens = np.frombuffer(values.buffers()[1], dtype="<i8")[values.offset : values.offset + len(values)]
    offsets = np.frombuffer(ids.buffers()[1], dtype="<i4")[ids.offset : ids.offset + len(ids) + 1]
    lengths = np.diff(offsets)
    val = np.repeat(_flags(table, "val"), lengths)
    test = np.zeros_like(val)
    if "test" in table.column_names:  # written only for a corpus with a test split
        test = np.repeat(_flags(table, "test"), lengths)
    streams = {"train": tokens[~val & ~test].astype(np.int32), "val": tokens[val].astype(np.int32)}
    if "test" in table.column_names:
        streams["test"] = tokens[test].astype(np.int32)
    return streams


def _flags(table: pyarrow.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise ValueError(f"{name} column holds {column.null_count} nulls")
    return np.array(column.to_pylist(), dtype=bool)


def load_token_cache(cache: Path, inputs_digest: str) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
    """The cached token streams and digests if the cache holds exactly what its record says; None if absent.

    Raises:
        TokenCacheMismatch: The cache exists but its record is missing or names other inputs, it cannot be
            read, or a split's tokens do not hash to the recorded digest.
    """
    record_path, arrow = cache / TOKEN_RECORD_FILE, cache / TOKENS_FILE
    if not cache.exists():
        return None
    if not record_path.is_file():
        raise TokenCacheMismatch(f"has no {TOKEN_RECORD_FILE} digest record")
    try:
        record = read_json(record_path)
        bound, recorded = record["inputs_digest"], dict(record["token_digests"])
        streams = split_streams(arrow)
    except (OSError, ValueError, KeyError, TypeError, pyarrow.ArrowException) as error:
        reason = (str(error).splitlines() or [""])[0][:200]
        raise TokenCacheMismatch(f"cannot be read ({type(error).__name__}: {reason})") from error
    if bound != inputs_digest:
        raise TokenCacheMismatch(f"was recorded for other inputs ({str(bound)[:12]}...)")
    digests = {name: token_digest(tokens) for name, tokens in streams.items()}
    if changed := sorted(name for name in digests.keys() | recorded.keys() if digests.get(name) != recorded.get(name)):
        raise TokenCacheMismatch(f"does not match its digest record ({', '.join(changed)} tokens differ)")
    return streams, digests


def check_token_cache(manifest: DataManifest, cache_dir: str | None = None) -> str:
    """Say whether the token cache a run's manifest names holds exactly the tokens it committed to.

    Returns:
        ``"absent"`` (it will be rebuilt from the sources when needed) or ``"matches"``.

    Raises:
        DataError: the cache exists but does not hold the manifest's tokens (a fit would rebuild it).
    """
    cache = default_cache_dir(cache_dir) / "corpora" / manifest.inputs_digest()
    try:
        cached = load_token_cache(cache, manifest.inputs_digest())
    except TokenCacheMismatch as mismatch:
        raise DataError(f"token cache {str(cache)!r} {mismatch}; a fit rebuilds it from the sources") from mismatch
    if cached is None:
        return f"absent from {str(cache)!r} (rebuilt from the sources when a fit needs it)"
    if manifest.token_digests and cached[1] != dict(manifest.token_digests):
        raise DataError(f"token cache {str(cache)!r} holds other tokens than the run's manifest records")
    return f"matches the manifest's token digests ({str(cache)!r})"


def spot_check(cached: tuple[dict[str, np.ndarray], dict[str, str]], tokenizer: Any, docs: list[tuple[str, str, bool]],
               held_out: list[str], encode: Callable[[dict[str, list], int], dict[str, list[list[int]]]],
               ) -> tuple[dict[str, np.ndarray], dict[str, str]]:  # fmt: skip
    """``cached``, once held to the sources as well as to its own record, cheaply: a cache rewritten together with
    its record (a shared cache is writable by any run) agrees with itself, so every id must lie in the tokenizer's
    vocabulary (one outside crashed the model's embedding), and each split must begin with its first document's
    tokens, tokenized again (an id swap or shift throughout changes them).

    Raises:
        TokenCacheMismatch: either does not hold (the cache is rebuilt from the sources).
    """
    streams, vocab = cached[0], tokenizer.get_vocab_size()
    eot = tokenizer.token_to_id(END_OF_TEXT)
    for name, tokens in streams.items():
        if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
            raise TokenCacheMismatch(f"holds token ids outside the tokenizer's {vocab} in its {name} split")
        first = next((index for index, split in enumerate(held_out) if split == name), None)
        if first is None:
            continue
        _, text, ends = docs[first]
        ids = encode({"text": [text], "eot": [ends]}, eot)["ids"][0]
        if tokens[: len(ids)].tolist() != ids:
            raise TokenCacheMismatch(f"does not begin its {name} split with its first document's tokens (it was "
                                     "rewritten together with its record)")  # fmt: skip
    return cached


def token_cache_hint(corpora: Path, trained: Any, current: Any) -> str | None:
    """The fix for a resume refused for its data when the text, settings and tokenizer (data manifests ``trained``
    and ``current``) are the run's and only the token cache under ``corpora`` gave other tokens; None otherwise."""
    if trained.inputs_digest() != current.inputs_digest() or trained.token_digests == current.token_digests:
        return None
    cache = corpora / current.inputs_digest()
    return (f"the text, settings and tokenizer are the run's, but the token cache {str(cache)!r} gives other tokens "
            "for them: altered since the run read it (remove it, then continue: it is built again from the text), or "
            "the run read an altered one (`python -m lit_psion doctor --tokens RUN_DIR` tokenizes the text again and "
            "says which)")  # fmt: skip
