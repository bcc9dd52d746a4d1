"""``python -m lit_psion ckpt verify|consolidate RUN_DIR``: the checkpoint a resume would use, verified (or gathered).

``consolidate`` turns the run's sharded checkpoint (one file per rank, the sharded strategy's) into
one verified ``model.safetensors`` checkpoint under ``RUN_DIR/consolidated/`` (or ``--out``), with a
``checkpoint_consolidate`` receipt in that directory's ``receipts.jsonl``; adapters, ``events
predict``, sampling and export read that copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lit_psion.commands import CommandParser
from lit_psion.commands.receipts import refuse_a_live_run, run_layout
from lit_psion.commands.records import refuse_without_its_records
from lit_psion.core.audit import check_chain, receipted_checkpoints, verify_in_its_run
from lit_psion.core.checkpoint import MANIFEST_FILE, RejectedCheckpoint, VerifiedCheckpoint, resolve_checkpoint
from lit_psion.core.errors import CheckpointError, ConfigError
from lit_psion.core.layout import RECEIPTS_FILE, RunLayout, refuse_output_in_a_run, step_of
from lit_psion.core.pointer import read_pointer
from lit_psion.core.run import RunRecord


def main(args: list[str]) -> None:
    parser = CommandParser("python -m lit_psion ckpt")
    parser.add_argument("action", choices=["verify", "consolidate"])
    parser.add_argument("run_dir", type=Path, help="a run directory (verify: or one of its step-NNNNNN directories)")
    parser.add_argument("--out", type=Path, default=None,
                        help="consolidate: the output directory (default: RUN_DIR/consolidated)")  # fmt: skip
    parsed = parser.parse_args(args)
    if parsed.action == "verify" and parsed.out is not None:
        raise ConfigError("--out is ckpt consolidate's; ckpt verify writes nothing: leave it out")
    if parsed.action == "verify" and (parsed.run_dir / MANIFEST_FILE).is_file():
        _verify_one(parsed.run_dir)
        return
    if parsed.action == "verify" and step_of(parsed.run_dir.name) is not None and parsed.run_dir.is_dir():
        raise CheckpointError(f"checkpoint {str(parsed.run_dir)!r} has no {MANIFEST_FILE}; it is incomplete or "
                              "damaged: restore it from a backup")  # fmt: skip
    in_checkpoints = parsed.run_dir.parent == RunLayout.of(parsed.run_dir.parent.parent).checkpoints
    if parsed.action == "verify" and not parsed.run_dir.exists() and (
        step_of(parsed.run_dir.name) is not None or in_checkpoints
    ):  # (a mistyped step name, such as step-15, too)
        kept = sorted(path.name for path in parsed.run_dir.parent.glob("step-*"))  # none when the parent is not there
        raise CheckpointError(f"{str(parsed.run_dir)!r}: no such checkpoint"
                              + (f" (the run keeps {', '.join(kept[-3:])})" if kept else ""))  # fmt: skip
    rejected: list[RejectedCheckpoint] = []
    layout = run_layout(parsed.run_dir)
    refuse_a_live_run(layout, f"ckpt {parsed.action}")
    receipted = receipted_checkpoints(layout)
    checkpoint = resolve_checkpoint(layout, rejected, quiet=True, receipted=receipted)
    for skipped in rejected:
        print(f"lit_psion: warning: skipped {skipped.path.name}: {skipped.reason}", file=sys.stderr)
    if parsed.action == "verify":
        _check_shards(checkpoint)
        _as_a_resume_would(layout, checkpoint)
        # A skipped checkpoint the receipts record as durable was damaged or replaced after it was written (one a
        # kill left unreceipted, or still in flight, is skipped as a resume would, and is not a failure).
        if damaged := [skipped for skipped in rejected if skipped.step in receipted.recorded]:
            reason = damaged[0].reason
            fix = ("give this user read access to its files (their mode, owner or mount): nothing shows they are "
                   "damaged" if "Permission denied" in reason else "restore it from a backup" if "restore it" in
                   reason else "restore it from a backup, or delete it if none holds it")  # fmt: skip
            if "restore it from a backup" in reason or "Permission denied" in reason:
                reason = reason.split("; ", 1)[0]  # (its own fix, said once below)
            raise CheckpointError(f"{damaged[0].path.name}, a durable checkpoint the receipts record, does not verify "
                                  f"({reason}); {fix} (a resume would use {checkpoint.path.name})")  # fmt: skip
        if (problem := _pointer_problem(layout, checkpoint.path.name, bool(receipted.recorded))) is not None:
            raise CheckpointError(f"{problem}; a resume would use {checkpoint.path.name} (the next checkpoint "
                                  "writes the pointer again)")  # fmt: skip
        kind = f"{(n := len(checkpoint.manifest.files) - 2)} shard{'s' * (n != 1)}, " if checkpoint.sharded else ""
        print(f"ok: {checkpoint.path} matches its manifest ({kind}what --ckpt_path last loads)")
        return
    refuse_output_in_a_run(parsed.out or layout.consolidated, own=layout.consolidated)
    if parsed.out is not None:
        _refuse_others_files(parsed.out)
    if not checkpoint.sharded:  # (said before torch is imported; consolidate() refuses it too)
        raise ConfigError(f"checkpoint {str(checkpoint.path)!r} is not sharded; it already is one model.safetensors "
                          "(nothing to consolidate: read the run directly)")  # fmt: skip
    from lit_psion.consolidation import consolidate  # (torch: once the output place is known to be fine)
    path, summary = consolidate(checkpoint, parsed.out or layout.consolidated)
    if summary.get("already"):
        print(f"already consolidated: {path} is {checkpoint.path.name}'s receipted copy and verifies "
              f"(model.safetensors sha256 {summary['weights_sha256'][:16]}...); nothing written")  # fmt: skip
        return
    print(f"consolidated {checkpoint.path.name} ({summary['values']:,} values in {summary['tensors']} named tensors) "
          f"into {path} (model.safetensors sha256 {summary['weights_sha256'][:16]}...)")


def _as_a_resume_would(layout: RunLayout, checkpoint: VerifiedCheckpoint) -> None:
    """What ``--ckpt_path last`` checks of the run besides the checkpoint, before it continues: its records (run.json,
    config, data manifest, metrics) and the whole receipt chain against every anchor (said "ok ... what
    --ckpt_path last loads" over a run a resume refuses: a deleted log, a malformed run.json, a rewritten chain).

    Raises:
        EvidenceError: the chain or a record does not verify (exit 5; a record a resume would overwrite: its own).
    """
    refuse_without_its_records(layout, checkpoint)
    if layout.receipts.is_file():
        check_chain(layout, RunRecord.load(layout), before_torn_tail=True,
                    known_heads={checkpoint.path.name: checkpoint.manifest.receipts_head})  # fmt: skip


def _pointer_problem(layout: RunLayout, used: str, receipted: bool) -> str | None:
    """What is wrong with a run's pointer that does not name ``used``, the checkpoint a resume uses (None when it
    does, or when there is none and no durable checkpoint is receipted: a kill before the first pointer leaves a
    checkpoint without one; the pointer is written before a checkpoint's durable receipt)."""
    try:
        pointer = read_pointer(layout)
    except CheckpointError as error:
        return str(error)
    if pointer is None and receipted:
        return f"checkpoint pointer {str(layout.pointer)!r} is missing, though the receipts record a durable checkpoint"
    if pointer is None or pointer.checkpoint == used:
        return None
    return f"checkpoint pointer {str(layout.pointer)!r} names {pointer.checkpoint}, which a resume does not use"


def _verify_one(path: Path) -> None:
    """Verify the checkpoint directory ``path`` itself; inside a run, hold it to the run and its receipts too.

    Raises:
        CheckpointError: a file differs from the manifest, or (inside a run) it was written by another run or is
            not the checkpoint its durable receipt recorded (exit 4).
    """
    checkpoint = verify_in_its_run(path)
    _check_shards(checkpoint)
    layout = RunLayout.of(path.resolve().parent.parent)
    where = ""
    if layout.is_run() and path.resolve().parent == layout.checkpoints.resolve():
        where = f", written by run {layout.run_id} as its receipts record"
    elif layout.is_run() and path.resolve().parent == layout.consolidated.resolve():
        from lit_psion.consolidation import held_copy  # (torch: only for a consolidated copy)

        held_copy(checkpoint, layout)
        where = f", the gathering of run {layout.run_id}'s {path.name}, which its receipts record"
    kind = f"{(n := len(checkpoint.manifest.files) - 2)} shard{'s' * (n != 1)}, " if checkpoint.sharded else ""
    print(f"ok: {checkpoint.path} matches its manifest ({kind}step {checkpoint.step}{where})")


def _check_shards(checkpoint: VerifiedCheckpoint) -> None:
    """A sharded checkpoint's DCP metadata against its manifest (torch is imported only for one)."""
    if checkpoint.sharded:
        from lit_psion.checkpoint_io import check_shards

        check_shards(checkpoint)


def _refuse_others_files(out: Path) -> None:
    """``--out`` must be new, empty, or an earlier ``ckpt consolidate --out``'s (its receipts and step directories):
    the copy and its receipt log would be mixed into anything else (a user's files, a runs root)."""
    if not out.is_dir() or out.is_symlink():
        if out.exists() or out.is_symlink():
            raise ConfigError(f"--out {str(out)!r} is not a directory; give a new or empty directory")
        return
    ours = [entry for entry in out.iterdir() if entry.name == RECEIPTS_FILE or entry.name.startswith(".")
            or step_of(entry.name) is not None]  # fmt: skip
    if others := sorted(entry.name for entry in out.iterdir() if entry not in ours):
        raise ConfigError(f"--out {str(out)!r} already holds files ckpt consolidate did not write (such as "
                          f"{others[0]!r}); give a new or empty directory, or an earlier consolidation's")  # fmt: skip
