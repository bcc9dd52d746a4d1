"""The run directory's layout (SPEC §2): the one place that spells its file names.

``RunLayout(root, run_id)`` names every path of a run; nothing else in lit_psion writes
``"run.json"`` or ``"checkpoints"`` by hand. ``root`` is what ``trainer.default_root_dir`` says
in a config (the runs root); the run directory is ``root / run_id``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from lit_psion.core.errors import CheckpointError, ConfigError, EvidenceError
from lit_psion.core.files import fsync_path, read_json
from lit_psion.core.text import shell_words

LATEST_FILE = "latest_run.json"
RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
DATA_MANIFEST_FILE = "data_manifest.json"
TOKENIZER_FILE = "tokenizer.json"
RECEIPTS_FILE = "receipts.jsonl"
METRICS_FILE = "metrics.csv"
SKIP_LIST_FILE = "skip_list.json"
MEMBERSHIP_FILE = "membership.json"
DRAIN_REQUESTS_FILE = "drain_requests.json"
PROMOTION_FILE = "promotion.json"
CHECKPOINTS_DIR = "checkpoints"
POINTER_FILE = "pointer.json"
DASHBOARD_DIR = "dashboard"
CONSOLIDATED_DIR = "consolidated"
STEP_PREFIX = "step-"

_STEP_NAME = re.compile(r"step-([0-9]+)")  # ASCII digits only: "step-٩" is not a checkpoint name


def step_name(step: int) -> str:
    """The directory name of the checkpoint at ``step`` (``step-000100``)."""
    return f"{STEP_PREFIX}{step:06d}"


def step_of(name: str) -> int | None:
    """The step a checkpoint directory name stands for, or None if it is not a checkpoint name.

    Names stop sorting by step past 999999, so order checkpoints by this, not by name.
    """
    match = _STEP_NAME.fullmatch(name)
    if match is None:
        return None
    step = int(match.group(1))
    return step if name == step_name(step) else None  # one name per step: no ``step-0000006`` alias



@dataclasses.dataclass(frozen=True, slots=True)
class RunLayout:
    """Every path of one run, from its runs root and run id."""

    root: Path
    run_id: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, run_dir: str | Path) -> RunLayout:
        """The layout of an existing run directory ``<root>/<run_id>`` (``.``, ``..`` and symlinks resolved, so
        the run id is the directory's own name)."""
        run_dir = Path(run_dir).resolve()
        return cls(run_dir.parent, run_dir.name)

    @property
    def run_dir(self) -> Path:
        return self.root / self.run_id

    @property
    def latest(self) -> Path:
        """``<root>/latest_run.json``: the run ``--ckpt_path last`` continues."""
        return self.root / LATEST_FILE

    @property
    def run_file(self) -> Path:
        return self.run_dir / RUN_FILE

    def sibling_to_continue(self) -> tuple[str, dict[str, Any]] | None:
        """The newest other run in this root that has a checkpoint pointer and is paused (or was killed while
        active), else the newest that completed, else the newest that failed, with its run.json record (None: none)."""
        found: list[tuple[str, dict[str, Any]]] = []
        with contextlib.suppress(OSError):
            for other in sorted((p.name for p in self.root.iterdir() if p.name != self.run_id), reverse=True):
                sibling = RunLayout(self.root, other)
                with contextlib.suppress(OSError, ValueError):
                    record = read_json(sibling.run_file)
                    if isinstance(record, dict) and sibling.pointer.is_file():
                        found.append((other, record))
        order = {"paused": 0, "active": 0, "completed": 1}  # then a failed one, which may have stopped on its data
        return min(found, key=lambda run: order.get(str(run[1].get("status")), 2), default=None)  # (newest first)

    @property
    def config(self) -> Path:
        return self.run_dir / CONFIG_FILE

    @property
    def data_manifest(self) -> Path:
        return self.run_dir / DATA_MANIFEST_FILE

    @property
    def tokenizer(self) -> Path:
        return self.run_dir / TOKENIZER_FILE

    @property
    def receipts(self) -> Path:
        return self.run_dir / RECEIPTS_FILE

    @property
    def metrics(self) -> Path:
        return self.run_dir / METRICS_FILE

    @property
    def skip_list(self) -> Path:
        return self.run_dir / SKIP_LIST_FILE

    @property
    def promotion(self) -> Path:
        return self.run_dir / PROMOTION_FILE

    @property
    def membership(self) -> Path:
        return self.run_dir / MEMBERSHIP_FILE

    @property
    def drain_requests(self) -> Path:
        return self.run_dir / DRAIN_REQUESTS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / CHECKPOINTS_DIR

    @property
    def pointer(self) -> Path:
        return self.checkpoints / POINTER_FILE

    @property
    def dashboard(self) -> Path:
        return self.run_dir / DASHBOARD_DIR

    @property
    def consolidated(self) -> Path:
        """Where ``ckpt consolidate`` writes the run's sharded checkpoints as single-file ones, by default."""
        return self.run_dir / CONSOLIDATED_DIR

    def checkpoint(self, step: int) -> Path:
        """The directory of the checkpoint at ``step``."""
        return self.checkpoints / step_name(step)

    def checkpoint_dirs(self) -> list[Path]:
        """The run's checkpoint directories, oldest step first (staging directories excluded).

        Raises:
            CheckpointError: ``checkpoints/`` is a symlink (what it holds could be anywhere; exit 4).
        """
        if self.checkpoints.is_symlink():
            raise CheckpointError(linked(self.checkpoints, "a run's checkpoints directory"))
        if not self.checkpoints.is_dir():
            return []
        found = [(step_of(p.name), p) for p in self.checkpoints.iterdir() if p.is_dir() and not p.is_symlink()]
        return [path for step, path in sorted((s, p) for s, p in found if s is not None)]

    def prune_checkpoints(self, keep_last_k: int, keep: Collection[str | None], untrusted: Collection[str]) -> None:
        """Delete all but the newest ``keep_last_k`` checkpoints (never one named in ``keep``: the pointed-to one, an
        in-flight write's; nor one ``ckpt consolidate`` copied, which its copy is held to), the staging left by a
        process killed mid-write or mid-delete, and any ``step-*`` link. A checkpoint a resume rejected
        (``untrusted``) is not counted: counted, the last verified ones before it went, and it stayed (doctor names
        it, for its owner to delete). Each goes out of sight by a rename first, so a kill mid-delete leaves no half
        checkpoint under a checkpoint's name."""
        for staging in self.checkpoints.glob(".step-*.tmp-*"):
            if not any(name and staging.name.startswith(f".{name}.") for name in keep):
                shutil.rmtree(staging, ignore_errors=True)
        for link in (link for link in self.checkpoints.glob("step-*") if link.is_symlink()):
            link.unlink()  # never one of ours, never followed: a checkpoint is a real directory
        saved = [path for path in self.checkpoint_dirs() if path.name not in untrusted]
        copied = {path.name for path in self.consolidated.glob("step-*") if path.is_dir() and not path.is_symlink()
                  and (path / "manifest.json").is_file()} if self.consolidated.is_dir() else set()  # fmt: skip
        for old in saved[: max(0, len(saved) - keep_last_k)]:
            if old.name not in keep and old.name not in copied:
                gone = old.rename(old.with_name(f".{old.name}.tmp-pruned"))
                fsync_path(self.checkpoints)
                shutil.rmtree(gone)

    def refuse_special_files(self) -> None:
        """Refuse a FIFO, socket or device in the run where a file belongs (reading it would block, or never end):
        in the run directory, ``checkpoints/`` and each checkpoint directory.

        Raises:
            CheckpointError: one in ``checkpoints/`` (exit 4).
            EvidenceError: one elsewhere in the run (exit 5).
        """
        places = [self.run_dir, self.checkpoints]
        if self.checkpoints.is_dir() and not self.checkpoints.is_symlink():
            places += [path for path in self.checkpoints.iterdir() if path.is_dir() and not path.is_symlink()]
        for place in places:
            if not place.is_dir() or place.is_symlink():
                continue
            for entry in os.scandir(place):
                plain = entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)
                if not (plain or entry.is_symlink()):  # (links have their own refusals, each where it is read)
                    error = CheckpointError if place != self.run_dir else EvidenceError
                    raise error(f"{entry.path!r} is not a regular file (a FIFO, socket or device): a run holds only "
                                "files and directories; put the file back in its place (restore it from a backup)")

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the run directory (digested records never hold absolute paths)."""
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.run_dir.resolve()))
        except ValueError:
            return str(path)

    def is_run(self) -> bool:
        return self.run_file.is_file()

    @property
    def resume_flags(self) -> str:
        """What continues this run from the command that trained it: its root, and ``--ckpt_path last``."""
        return f"--trainer.default_root_dir {shell_words(self.root)} --ckpt_path last"


def linked(path: Path, what: str, fix: str = "move the directory it points to into its place") -> str:
    """The line for a directory that is a symlink where lit_psion reads and writes a real one (SPEC §6: what a run
    names stays inside its root)."""
    return (f"{str(path)!r} is a symlink (to {str(path.resolve())!r}); {what} is a real directory inside the runs "
            f"root, never followed out of it: {fix}")


def no_run_or_checkpoint(location: Path) -> str:
    """The refusal of a path that does not exist where a run or checkpoint directory is read."""
    return (f"{str(location)!r} does not exist; give a run directory (with {RUN_FILE}) or a checkpoint directory "
            "(step-NNNNNN with manifest.json)")


def not_a_run(path: str | Path, advice: str = "give <root>/<run_id>") -> str:
    """Why ``path`` is not a run directory, and what to give instead, for a refusal's line: a file or folder
    inside a run (its run.json, a checkpoint) is pointed to the run."""
    path = Path(path)
    for parent in list(path.parents)[:3]:
        if RunLayout.of(parent).is_run():
            return f"{str(path)!r} is inside run directory {str(parent)!r}; give that run directory"
    for place in [path, *list(path.parents)[:3]]:  # a session's files are checked by the session commands
        if place.parent.name == "sessions" and (place / "meta.json").is_file():
            root = shell_words(place.parent.parent)
            where = "the directory" if place == path else f"inside the directory ({str(place)!r})"
            return (f"{str(path)!r} is {where} of session {place.name!r}, not a run directory; check a session with "
                    f"python -m lit_psion session verify --artifacts_root {root} --session_id "
                    f"{shell_words(place.name)}")  # fmt: skip
        if (place / "base" / "base_meta.json").is_file():
            where = "an artifacts root of sessions" if place == path else \
                f"inside the sessions' artifacts root {str(place)!r}"  # fmt: skip
            return (f"{str(path)!r} is {where}, not a run directory; see its sessions with python -m lit_psion "
                    f"session list --artifacts_root {shell_words(place)}")  # fmt: skip
    return f"{str(path)!r} {_what_it_is(path, advice)}"


def _what_it_is(path: Path, advice: str) -> str:
    """What a path that is not a run directory is, in a refusal's words: missing, a file, a runs root (with the run
    to give), a checkpoint directory moved out of its run (with the command that checks it), or none of these."""
    from lit_psion.core.checkpoint import MANIFEST_FILE  # (checkpoint reads layouts)

    if not path.exists():
        return "does not exist" + (" (a symlink to nothing)" if path.is_symlink() else "") + f"; {advice}"
    if not path.is_dir():
        return f"is a file, not a run directory; {advice}"
    if runs := sorted(run.parent.name for run in path.glob(f"*/{RUN_FILE}")):
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):  # the root's own latest, if it says
            latest = read_json(path / LATEST_FILE).get("run_id")
            runs += [latest] if latest in runs else []
        return (f"is a runs root of {len(set(runs))} run(s), not one run: give one of them, such as the latest, "
                f"{shell_words(path / runs[-1])}")  # fmt: skip
    if (path / MANIFEST_FILE).is_file():
        return (f"is a checkpoint directory outside any run, not a run directory; python -m lit_psion ckpt verify "
                f"{shell_words(path)} checks it")  # fmt: skip
    return f"is not a run directory (no {RUN_FILE}); {advice}"


def in_a_run(path: Path) -> tuple[Path, str] | None:
    """The run directory ``path`` is, or lies inside, and how to say so ("is a run directory", "is inside run
    directory '...'"); None when it is in none (a path too long to look at is in none)."""
    resolved = path.resolve()
    for place in (resolved, *resolved.parents):
        try:
            if RunLayout.of(place).is_run():
                return place, "is a run directory" if place == resolved else f"is inside run directory {str(place)!r}"
        except OSError:  # ENAMETOOLONG: nothing is there (whoever would write there is refused for its length)
            continue
    return None


OTHER_ROOTS = (("program.json", "window program"), ("sessions/index.json", "sessions artifacts root"))
"""The files that mark a directory another command keeps its records in (a window program, a sessions root)."""


def refuse_output_in_a_run(out: Path, flag: str = "--out", own: Path | None = None) -> None:
    """A command's output directory, refused in one line if it is a file or lies in a run directory (it would
    overwrite the run's files or append to its receipt chain), unless it is ``own``: the run's place for it.

    Raises:
        ConfigError: ``out`` is a file, a run directory, or inside one (exit 2).
    """
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"{flag} {str(out)!r} is a symbolic link to {os.readlink(out)!r}, which does not exist; give "
                          "a new or empty directory (or create the one it points to)")  # fmt: skip
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {str(out)!r} is a file; give a directory")
    if own is not None and not own.is_symlink() and out.resolve() == own.resolve():
        return  # (a link in its place is followed and held to where it leads: another run's files, or its own)
    if (run := in_a_run(out)) is not None:
        raise ConfigError(f"{flag} {str(out)!r} {run[1]}: writing there would overwrite the run's files or break its "
                          "receipt chain; give a directory outside any run")  # fmt: skip
    for place in out.resolve().parents:  # (itself: not new or empty, refused)
        for marker, kind in OTHER_ROOTS:
            if (place / marker).is_file():
                raise ConfigError(f"{flag} {str(out)!r} is inside {kind} {str(place)!r} ({marker}): its commands "
                                  "would read what is written there as its own records; give a directory outside "
                                  "it")  # fmt: skip


def refuse_a_stray_checkpoint(path: Path) -> None:
    """A checkpoint directory inside a run, but not one of its checkpoints (``checkpoints/step-NNNNNN``) or
    consolidated copies: no receipt of the run holds it, yet it sits in the run as if the run had written it.

    Raises:
        CheckpointError: ``path`` is such a directory (exit 4).
    """
    found = in_a_run(path)
    if found is None:
        return
    layout = RunLayout.of(found[0])
    if path.resolve().parent not in (layout.checkpoints.resolve(), layout.consolidated.resolve()):
        raise CheckpointError(f"{str(path)!r} is inside run {layout.run_id!r} but is none of its checkpoints (those "
                              f"are {str(layout.checkpoints / 'step-NNNNNN')!r}): no receipt of the run holds it; "
                              "give one of the run's checkpoints")  # fmt: skip
