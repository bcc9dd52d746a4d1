"""``checkpoints/pointer.json``: which durable checkpoint of a run a resume loads (written only after it is durable)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_psion.core.errors import CheckpointError
from lit_psion.core.files import atomic_write_json, read_json
from lit_psion.core.layout import RunLayout, step_of

if TYPE_CHECKING:
    from lit_psion.core.checkpoint import VerifiedCheckpoint


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointPointer:
    """``checkpoints/pointer.json``: the latest durable, accepted checkpoint of a run."""

    step: int
    checkpoint: str
    """The checkpoint directory's name inside ``checkpoints/``."""
    manifest_sha256: str

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_pointer(layout: RunLayout) -> CheckpointPointer | None:
    """The run's pointer, or None if it has none; a malformed pointer is a :class:`CheckpointError`."""
    path = layout.pointer
    if path.is_symlink():
        raise CheckpointError(f"checkpoint pointer {str(path)!r} is a symlink; a run's pointer is a plain file inside "
                              "it (the next checkpoint writes it again)")  # fmt: skip
    if not path.exists():
        return None
    try:
        record = read_json(path)
        if not isinstance(record, dict):
            raise TypeError(f"it holds a JSON {type(record).__name__}, not an object with step, checkpoint and "
                            "manifest_sha256")  # fmt: skip
        pointer = CheckpointPointer(step=record["step"], checkpoint=record["checkpoint"],
                                    manifest_sha256=record["manifest_sha256"])  # fmt: skip
        shaped = type(pointer.step) is int and isinstance(pointer.checkpoint, str)
        if not shaped or not isinstance(pointer.manifest_sha256, str):  # ("12" for 12: as it was written, or not)
            raise TypeError(f"step {pointer.step!r}, checkpoint {pointer.checkpoint!r}, manifest_sha256 "
                            f"{pointer.manifest_sha256!r}: a number and two strings")  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as error:
        raise CheckpointError(f"checkpoint pointer {str(path)!r} is malformed ({error})") from error
    if step_of(pointer.checkpoint) is None:
        raise CheckpointError(f"checkpoint pointer {str(path)!r} names {pointer.checkpoint!r}, which is not a "
                              "step-NNNNNN directory of this run")  # fmt: skip
    return pointer


def write_pointer(layout: RunLayout, checkpoint: VerifiedCheckpoint | CheckpointPointer) -> CheckpointPointer:
    """Point the run at ``checkpoint`` (a pointer, or a verified checkpoint: atomically); return the pointer written."""
    if not isinstance(checkpoint, CheckpointPointer):
        checkpoint = CheckpointPointer(step=checkpoint.step, checkpoint=checkpoint.path.name,
                                       manifest_sha256=checkpoint.manifest_sha256)  # fmt: skip
    atomic_write_json(layout.pointer, checkpoint.to_json_dict())
    return checkpoint


def after_a_failed_write(checkpoint: Path, fix: str) -> str:
    """What a failed write of the checkpoint directory ``checkpoint`` leaves, and the way on: ``fix`` the cause, then,
    in a run's ``checkpoints/``, continue from the pointed-to checkpoint or, with none yet, start the fit again; else
    (a consolidated copy, a window's revision) run the command again."""
    layout = RunLayout.of(checkpoint.parent.parent)
    if checkpoint.parent.name != layout.checkpoints.name or not layout.is_run():
        return f"nothing was written in its place ({fix}, then run the command again)"
    if layout.pointer.exists():
        return f"the previous checkpoint is still the pointed-to one ({fix}, then {layout.resume_flags})"
    return f"the run has no earlier checkpoint to continue from ({fix}, then run the fit again without --ckpt_path)"
