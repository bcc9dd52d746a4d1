"""What the sessions' registry (``sessions/index.json``) and its lock must be before a command commits anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def registry_problem(meta: dict[str, Any], entry: Any) -> str | None:
    """Why a session's ``meta.json`` is not what its ``index.json`` entry registered, or None (no entry: nothing to
    hold it to). A commit writes meta.json first, so a crash leaves the index behind, never ahead: fewer runs than
    registered means the session's directory was put back from an earlier copy; another parent or root session id
    means the lineage was edited. Either way the session's next run would rewrite the entry to hide it."""
    if not isinstance(entry, dict):
        return None
    runs, registered = meta.get("runs"), entry.get("runs")
    if isinstance(runs, list) and isinstance(registered, list) and len(registered) > len(runs):
        return (f"session {meta['session_id']!r}'s meta.json records {len(runs)} run(s), but index.json records "
                f"{len(registered)}: the session's directory was put back from an earlier copy; restore it from "
                "a backup (the next run would have rewritten the index to match)")  # fmt: skip
    edited = [f"{key} {meta.get(key)!r}, but index.json registers {entry.get(key)!r}"
              for key in ("parent_session_id", "root_session_id") if key in entry and entry[key] != meta.get(key)]
    if edited:
        return (f"session {meta['session_id']!r}'s meta.json records {' and '.join(edited)} (the lineage was "
                "edited); restore meta.json from a backup (the next run would have rewritten the index to match)")
    return None
