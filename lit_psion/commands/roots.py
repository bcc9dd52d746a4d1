"""The runs root of a fit: made (or refused in one line) before anything is written, and taken back when the fit is
refused before its run exists."""

from __future__ import annotations

import os
from pathlib import Path

from lit_psion.core.errors import ConfigError, LitPsionError
from lit_psion.core.layout import LATEST_FILE, in_a_run
from lit_psion.core.run import read_latest


def make_root(root: Path) -> list[Path]:
    """Create the runs root, or refuse in one line a root that cannot hold runs. Returns the directories it
    created, deepest first (``remove_if_empty`` takes them back when the fit is refused before its run exists)."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"trainer.default_root_dir {str(root)!r} is a file; give a directory for runs")
    made = [path for path in (root, *root.parents) if not path.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"trainer.default_root_dir {str(root)!r} cannot be created ({error.strerror or error}); "
                          "give a writable directory") from error  # fmt: skip
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"trainer.default_root_dir {str(root)!r} is not writable; give a writable directory")
    longest = len(os.fsencode(os.path.abspath(root))) + RUN_PATH_ROOM
    if longest > (most := _path_max(root)):  # (else found only at the first checkpoint, as a disk fault)
        remove_if_empty(made)
        raise ConfigError(f"trainer.default_root_dir is {longest - RUN_PATH_ROOM} bytes long, and a run's files lie "
                          f"up to {RUN_PATH_ROOM} bytes deeper, past this system's {most}-byte path limit; give a "
                          "shorter path")  # fmt: skip
    latest = root / LATEST_FILE
    if latest.exists() and not latest.is_symlink() and not latest.is_file():  # (a link is replaced, never followed)
        raise ConfigError(f"{str(latest)!r} is not a file (a directory, FIFO or device) where lit_psion writes which "
                          "run is the latest: a new run there could not say so; move it away, or give another "
                          "--trainer.default_root_dir")  # fmt: skip
    return made


def refuse_root_in_a_run(root: Path) -> None:
    """A runs root that is a run directory or lies inside one (a checkpoint of it), refused in one line: a fit there
    made its run and ``latest_run.json`` among the run's files (a checkpoint then failed its manifest, and a resume
    fell back past it)."""
    if (run := in_a_run(root)) is not None:
        place, where = run
        holder = str(place.parent)
        try:
            latest = read_latest(place.parent)
        except (LitPsionError, OSError):
            latest = None
        resume = (f"--trainer.default_root_dir {holder!r} --ckpt_path last" if latest == place.name else
                  f"LIT_PSION_RUN_ID={place.name} and --trainer.default_root_dir {holder!r} (--ckpt_path last "
                  f"would take {'another run, ' + latest if latest else 'no run'})")  # fmt: skip
        raise ConfigError(f"trainer.default_root_dir {str(root)!r} {where}: a run made there would write among "
                          f"that run's files; give the directory that holds it ({holder!r}; continue this run "
                          f"with {resume}), or one outside any run")  # fmt: skip


RUN_PATH_ROOM = 120
"""Bytes a run's deepest file adds to its root's path (``/<run id>/checkpoints/.step-NNNNNN.tmp-XXXXXXXX/...``,
about 90), with room to spare."""


def _path_max(root: Path) -> int:
    try:
        return os.pathconf(root, "PC_PATH_MAX")
    except (OSError, ValueError):  # a file system that does not say: Linux's
        return 4096


def remove_if_empty(made: list[Path]) -> None:
    """Remove the directories ``make_root`` created, deepest first, while they are empty."""
    for path in made:
        try:
            path.rmdir()
        except OSError:  # holds a run (or anything else): kept, and so is every directory above it
            return
