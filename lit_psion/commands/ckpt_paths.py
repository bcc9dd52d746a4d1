"""What a training command's ``--ckpt_path`` must be before anything else is read: ``last`` or a checkpoint
directory; a Lightning checkpoint word, a run directory, a file or a missing path is one line."""

from __future__ import annotations

from pathlib import Path

from lit_psion.core.errors import CheckpointError, ConfigError, LitPsionError
from lit_psion.core.layout import LATEST_FILE, RunLayout

LIGHTNING_CKPT_WORDS = ("best", "hpc", "registry")
"""Lightning's own ``ckpt_path`` words, for checkpoints lit_psion does not write or verify."""


def refuse_unusable_ckpt_path(ckpt_path: str | None, manifest_file: str) -> None:
    """``--ckpt_path`` is ``last`` or a checkpoint directory holding ``manifest_file``, else one line: exit 4 for a
    checkpoint that is not there, exit 2 for an argument that names something else (a file, a run, a word)."""
    if ckpt_path is None or ckpt_path == "last" or (Path(ckpt_path) / manifest_file).is_file():
        return
    fix = "give a <run>/checkpoints/step-NNNNNN directory, or 'last' to continue the latest run"
    path = Path(ckpt_path)
    if ckpt_path in LIGHTNING_CKPT_WORDS:
        raise ConfigError(f"--ckpt_path {ckpt_path!r} is a Lightning checkpoint name lit_psion does not keep; {fix}")
    if not path.exists():
        raise CheckpointError(f"--ckpt_path {ckpt_path!r}: no such checkpoint; {fix}")
    if RunLayout.of(path).is_run():
        raise ConfigError(f"--ckpt_path {ckpt_path!r} is a run directory, not one of its checkpoints; give "
                          f"{_checkpoint_of(RunLayout.of(path))}")
    if (above := RunLayout.of(path.parent)).is_run() and path == above.checkpoints:
        raise ConfigError(f"--ckpt_path {ckpt_path!r} is a run's checkpoints directory, not one of its checkpoints; "
                          f"give {_checkpoint_of(above)}")
    if (path / LATEST_FILE).is_file():
        raise ConfigError(f"--ckpt_path {ckpt_path!r} is a runs root, not a checkpoint; give "
                          f"--trainer.default_root_dir {ckpt_path!r} --ckpt_path last to continue its latest run")
    raise ConfigError(f"--ckpt_path {ckpt_path!r} is not a lit_psion checkpoint directory (a "
                      f"<run>/checkpoints/step-NNNNNN with manifest.json); {fix}")


def _checkpoint_of(layout: RunLayout) -> str:
    """How to give a run directory's checkpoint: ``last`` only for its root's latest run (it names that one)."""
    from lit_psion.core.pointer import read_pointer
    from lit_psion.core.run import read_latest

    try:
        pointed = f"{str(layout.checkpoints / read_pointer(layout).checkpoint)!r} (its latest checkpoint)"
    except (LitPsionError, OSError, AttributeError):
        pointed = "one of its checkpoints/step-NNNNNN"
    try:
        latest = read_latest(layout.root)
    except (LitPsionError, OSError):
        latest = None
    if latest == layout.run_id:
        return f"--trainer.default_root_dir {str(layout.root)!r} --ckpt_path last, or {pointed}"
    return pointed + (f"; --ckpt_path last would take another run, {latest}" if latest else "")
