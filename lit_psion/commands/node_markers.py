"""The markers a ``mesh launch`` node's workers leave it in its directory (``NODE_MARKERS_ENV``), read back: a drain,
an error no restart fixes, a bug, a pause. Plain files, no Lightning or torch import."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from lit_psion.core.membership import PAUSED_MARKER


def fatal(markers: Path) -> int | None:
    """The exit code a worker of this node left for an error no restart fixes (config, data, ...), if any."""
    for path in sorted(markers.glob("fatal-*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return int(json.loads(path.read_text())["code"])
    return None


def repeated_bug(markers: Path) -> str | None:
    """The last unexpected error (exit 1) of this node's workers once workers of two of its starts have had one."""
    found = {}
    for path in sorted(markers.glob("bug-*.json"), key=lambda path: path.stat().st_mtime):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            record = json.loads(path.read_text())
            found[str(record["start"])] = str(record["message"])
    return list(found.values())[-1] if len(found) >= 2 else None


def paused_at(markers: Path) -> int | None:
    """The step this node's workers paused after, told to stop, if one of them said so."""
    steps = []
    for path in markers.glob(f"{PAUSED_MARKER}*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            steps.append(int(json.loads(path.read_text())["step"]))
    return max(steps, default=None)


def marked(markers: Path, workers: int) -> bool:
    """Every worker of this node has left a drain marker (they may still be finishing their checkpoint)."""
    return len([path for path in markers.glob("*.json") if path.stem.isdigit()]) >= workers


def drained(markers: Path, workers: int) -> bool:
    """Every worker of this node left a drain marker and has exited."""
    left = [int(path.stem) for path in markers.glob("*.json") if path.stem.isdigit()]
    return len(left) >= workers and not any(alive(pid) for pid in left)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not Path("/proc").is_dir()  # no /proc: kill(0) is all there is
    return state != "Z"
