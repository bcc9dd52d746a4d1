"""What the sessions' registry (``sessions/index.json``) and its lock must be before a command commits anything."""

from __future__ import annotations

from pathlib import Path

from lit_psion.core.errors import ConfigError, EvidenceError


def refuse_an_unusable_registry(index: Path, lock: Path) -> None:
    """Refuse a registry or a registry lock that is not a regular file, before a commit writes ``meta.json`` (its
    commit point): the index update after it would crash, leaving a session its registry never lists.

    Raises:
        EvidenceError: ``index`` is a directory or a link (restore it).
        ConfigError: ``lock`` is a directory, a link or a FIFO (remove it).
    """
    if index.is_symlink() or (index.exists() and not index.is_file()):
        raise EvidenceError(f"{str(index)!r} is not a file (a directory or a link in its place); restore index.json "
                            "from a backup, or move it aside")  # fmt: skip
    if lock.is_symlink() or (lock.exists() and not lock.is_file()):
        raise ConfigError(f"{str(lock)!r} is not the sessions' lock file (a directory, a link or a FIFO in its "
                          "place); remove it, then run the command again")  # fmt: skip
