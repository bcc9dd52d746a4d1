"""Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader never sees a half-written file: it sees the old content or the new content.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from lit_psion.core.errors import DataError


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_process_umask()
"""The mode ``open()`` gives a new file under this process's umask (read once, at import: reading it sets it)."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes it 0600: give it what any other file of the run gets
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (human-readable, stable)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    """The JSON in the regular file ``path``; an object with a key twice is a ValueError (a reader that kept the
    other value would read another record under the same digest), and so is a lone surrogate escape (``\\ud800``:
    JSON parses it, but it is no text, and digesting or writing it failed deep inside a command, exit 1)."""
    text = read_plain(path).decode("utf-8")
    record = json.loads(text, object_pairs_hook=unique_keys)
    if _SURROGATE_ESCAPE.search(text):  # (a pair is an emoji's; only then is the whole record encoded to tell)
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{str(path)!r} holds a lone surrogate escape (\\ud800-\\udfff): no text") from None
    return record


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (``object_pairs_hook``): with a key twice, which value counts
    depends on the parser (Python's keeps the last), so a digest over one reading proves nothing of another."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        raise ValueError(f"the key {next(key for key, _ in pairs if key in seen or seen.add(key))!r} twice in one "
                         "object")
    return record


def read_plain(path: str | Path) -> bytes:
    """The bytes of the regular file ``path``. A FIFO, socket or device put in a file's place is an OSError at
    once (opened without blocking, so no reader hangs on a FIFO no one writes); a directory is IsADirectoryError.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)", str(path))
        return handle.read()


def unshare(path: str | Path) -> None:
    """Give ``path`` an inode of its own before it is changed in place (appended to, truncated): a file with more
    than one name (a run copied with ``cp -al``, a backup made with hard links) is copied and the copy renamed over
    this name, so the change never reaches the other names. A file with one name, or none, is left as it is."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        atomic_write_bytes(path, read_plain(path))


def fsync_path(path: str | Path) -> None:
    """fsync a file's contents, or a directory's entries (making a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def not_utf8(value: str) -> bool:
    """Whether ``value`` holds a surrogate: bytes an argument or a file name had that are not UTF-8 (Python keeps
    them as surrogates), which no record can hold, nor any digest or file be written from."""
    return _SURROGATE.search(value) is not None


_SURROGATE = re.compile("[\ud800-\udfff]")


def decode_text(name: str, data: bytes) -> str:
    """``data`` as UTF-8 text; a binary or non-UTF-8 source is refused, naming the first bad byte.

    Raises:
        DataError: ``data`` holds a NUL byte (binary) or a byte sequence that is not UTF-8.
    """
    nul = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        offset = error.start if nul < 0 else min(nul, error.start)
    else:
        if nul < 0:
            return text
        offset = nul
    kind = "a NUL byte (a binary file)" if offset == nul else f"byte 0x{data[offset]:02x}, not UTF-8"
    raise DataError(f"data file {name!r} is not UTF-8 text: {kind} at byte offset {offset}; exclude it from "
                    "--data.files (sources are read as UTF-8 text)")  # fmt: skip
