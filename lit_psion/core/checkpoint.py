"""Checkpoint truth (SPEC §3): manifests, the pointer, verification and the resume resolver.

A checkpoint is a directory ``checkpoints/step-NNNNNN/`` whose ``manifest.json`` lists every file
with its sha256 and size, plus the step, run, model signature, data manifest digest, data cursor,
parent checkpoint and writer. ``checkpoints/pointer.json`` names the latest durable one with its
manifest's sha256. Verification reads each file once, hashes the bytes it read and hands those
same bytes on, so what is loaded is what was hashed. The shards of a sharded or DeepSpeed
checkpoint are the exception: they are hashed as a stream and not held (every rank verifies every
shard, and holding them all would put the whole model in each rank's memory); a loader reads one
again through :meth:`VerifiedCheckpoint.read`, which hashes it again and refuses it if it changed.
Framework-free: deserializing the bytes is the caller's business.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from lit_psion.core.anchoring import NOT_IN_CHAIN, SUPERSEDED, at_the_run_head, unanchored, unreceipted_problem
from lit_psion.core.chain import cut_short
from lit_psion.core.errors import CheckpointError, EvidenceError, SupersededCheckpoint
from lit_psion.core.files import read_json, unique_keys
from lit_psion.core.layout import RunLayout, linked, step_of
from lit_psion.core.loadable import structure_problem
from lit_psion.core.pointer import read_pointer

MANIFEST_FILE = "manifest.json"
CONSOLIDATION_PREFIX = "consolidate-"
"""The run id of a consolidated models' receipt log is this and the run's id."""
MANIFEST_VERSION = 1
DURABLE = "durable"
SINGLE, SHARDED, DEEPSPEED = "single", "sharded", "deepspeed"
"""Checkpoint layouts (:attr:`CheckpointManifest.layout`), each loaded by its own strategies only."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FileRecord:
    sha256: str
    bytes: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointManifest:
    """What ``manifest.json`` records about one checkpoint directory."""

    step: int
    files: dict[str, FileRecord]
    run_id: str | None = None
    model_signature: str | None = None
    data_manifest_digest: str | None = None
    cursor: dict[str, Any] | None = None
    """The data cursor the checkpoint resumes from (the training loader's state)."""
    parent: str | None = None
    """The checkpoint the pointer named when this one was written."""
    writer: str | None = None
    membership: dict[str, Any] | None = None
    """The mesh membership (epoch, nodes, world size) the checkpoint was written in, under a mesh strategy."""
    receipts_head: str | None = None
    """The receipt chain's head when the checkpoint was written: a durable anchor of the chain (truncation
    below it is detected even if run.json is edited)."""
    consolidated_from: str | None = None
    """For a checkpoint made by ``ckpt consolidate``: the manifest sha256 of the sharded checkpoint it gathers."""
    durability: str = DURABLE
    version: int = MANIFEST_VERSION

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def weights_sha256(self) -> str | None:
        """The digest of the checkpoint's one safetensors file (what a checkpoint receipt records)."""
        weights = [record.sha256 for name, record in self.files.items() if name.endswith(".safetensors")]
        return weights[0] if len(weights) == 1 else None

    @property
    def sharded(self) -> bool:
        """Written by every rank as DCP shards (``*.distcp``) rather than one safetensors file."""
        return self.layout == SHARDED

    @property
    def layout(self) -> str:
        """How the weights are stored: ``single`` (one safetensors file), ``sharded`` (DCP shards, one per rank)
        or ``deepspeed`` (a DeepSpeed checkpoint directory)."""
        if any(name.endswith(".distcp") for name in self.files):
            return SHARDED
        if any(name.endswith("_model_states.pt") for name in self.files):
            return DEEPSPEED
        return SINGLE

    @classmethod
    def from_json_dict(cls, record: dict[str, Any], where: str = "manifest") -> CheckpointManifest:
        """Parse a manifest record; a malformed one is a :class:`CheckpointError` naming ``where``."""
        try:
            known = {field.name for field in dataclasses.fields(cls)}
            values = {key: value for key, value in record.items() if key in known}
            values["files"] = {str(name): FileRecord(**entry) for name, entry in record["files"].items()}
            manifest = cls(**values)
        except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as error:
            raise CheckpointError(f"checkpoint manifest {where!r} is malformed ({error}); it is not a lit_psion "
                                  "checkpoint or it was edited") from error  # fmt: skip
        if not isinstance(manifest.step, int):
            raise CheckpointError(f"checkpoint manifest {where!r} has step {manifest.step!r}, not an integer")
        return manifest


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedCheckpoint:
    """A checkpoint whose files matched its manifest, with the bytes that were hashed.

    ``contents`` maps each held file to the exact bytes verified; a loader deserializes those (never
    re-reading the file), so a checkpoint swapped on disk after verification is not loaded. Shards are
    not held (see :func:`verify_checkpoint`): :meth:`read` reads one again and checks it once more.
    """

    path: Path
    manifest: CheckpointManifest
    manifest_sha256: str
    contents: dict[str, bytes] = dataclasses.field(repr=False)

    @property
    def step(self) -> int:
        return self.manifest.step

    def read(self, name: str) -> bytes:
        """The bytes of the listed file ``name``, as they matched the manifest.

        A held file's verified bytes; a shard is read again and hashed again, and refused if it no longer
        matches (changed on disk since it was verified), so a loader still gets only bytes the manifest
        vouches for, while at most the shard being read is in memory.

        Raises:
            CheckpointError: ``name`` is not listed, or its file changed or went away since verification.
        """
        if name in self.contents:
            return self.contents[name]
        if name not in self.manifest.files:
            raise CheckpointError(f"checkpoint {str(self.path)!r}: {name!r} is not listed in its manifest")
        try:
            return _read_verified(self.path, name, self.manifest.files[name])
        except CheckpointError as error:
            raise CheckpointError(f"{error} (it changed after the checkpoint was verified)") from error

    @property
    def weights_sha256(self) -> str | None:
        return self.manifest.weights_sha256

    @property
    def sharded(self) -> bool:
        """Written by every rank as DCP shards (the sharded strategy), not as one safetensors file."""
        return self.manifest.sharded

    @property
    def layout(self) -> str:
        return self.manifest.layout


def verify_checkpoint(directory: str | Path, manifest_sha256: str | None = None) -> VerifiedCheckpoint:
    """Check a checkpoint directory against its manifest, reading and hashing each file once.

    Args:
        directory: The ``step-NNNNNN`` directory.
        manifest_sha256: If given (a pointer's record), the manifest itself must have this digest.

    Raises:
        CheckpointError: naming the first thing that differs: a missing, extra, symlinked or
            changed file (expected and actual digest), or a manifest that does not match the pointer.
    """
    directory = Path(directory)
    if directory.is_symlink():
        raise CheckpointError(f"checkpoint {str(directory)!r} is a symlink; checkpoints are regular directories")
    manifest_path = directory / MANIFEST_FILE
    if not directory.exists():
        raise CheckpointError(f"checkpoint {str(directory)!r} does not exist (deleted or moved); restore it from a "
                              "backup")  # fmt: skip
    if not manifest_path.is_file() or manifest_path.is_symlink():
        raise CheckpointError(f"checkpoint {str(directory)!r} has no {MANIFEST_FILE}; it is incomplete or not a "
                              "checkpoint")  # fmt: skip
    raw = manifest_path.read_bytes()
    actual_manifest = hashlib.sha256(raw).hexdigest()
    if manifest_sha256 is not None and actual_manifest != manifest_sha256:
        raise CheckpointError(f"checkpoint manifest {str(manifest_path)!r} does not match the digest in the pointer")
    try:
        record = json.loads(raw, object_pairs_hook=unique_keys)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise CheckpointError(f"checkpoint manifest {str(manifest_path)!r} is not valid JSON ({error})") from error
    if not isinstance(record, dict):
        raise CheckpointError(f"checkpoint manifest {str(manifest_path)!r} is not a JSON object")
    manifest = CheckpointManifest.from_json_dict(record, str(manifest_path))
    if step_of(directory.name) not in (None, manifest.step):
        raise CheckpointError(f"checkpoint {str(directory)!r} holds the manifest of step {manifest.step}; a "
                              "checkpoint's directory names its own step")  # fmt: skip
    present = _present_files(directory) - {MANIFEST_FILE}
    if links := sorted(name for name in present if (directory / name).is_symlink()):
        raise CheckpointError(f"checkpoint entry {str(directory / links[0])!r} is a symlink; checkpoints hold only "
                              "regular files and directories")  # fmt: skip
    if extra := sorted(present - manifest.files.keys()):
        raise CheckpointError(f"checkpoint {str(directory)!r} holds a file its manifest does not list: {extra[0]!r}")
    contents = {}
    for name, expected in sorted(manifest.files.items()):
        if _is_shard(manifest.layout, name):
            _read_verified(directory, name, expected, hold=False)
        else:
            contents[name] = _read_verified(directory, name, expected)
            if (problem := structure_problem(name, contents[name])) is not None:
                raise CheckpointError(f"checkpoint file {str(directory / name)!r} matches its manifest but cannot be "
                                      f"loaded: {problem} (the manifest was written over a damaged file); restore the "
                                      "checkpoint from a backup")  # fmt: skip
    return VerifiedCheckpoint(path=directory, manifest=manifest, manifest_sha256=actual_manifest, contents=contents)


def _present_files(directory: Path) -> set[str]:
    """Every entry under ``directory`` that is not a real directory (files, symlinks), as relative POSIX paths."""
    present = set()
    for path in directory.rglob("*"):  # rglob does not descend into symlinked directories
        if path.is_symlink() or not path.is_dir():
            present.add(path.relative_to(directory).as_posix())
    return present


def _is_shard(layout: str, name: str) -> bool:
    """A file verification hashes as a stream and does not hold: a rank's part of a sharded or DeepSpeed
    checkpoint (a loader reads it again through :meth:`VerifiedCheckpoint.read`; DeepSpeed reads its own)."""
    return (layout == SHARDED and name.endswith(".distcp")) or (layout == DEEPSPEED and name.startswith("checkpoint/"))


def _no_link(path: str, flags: int) -> int:
    """Open ``path`` only if it is not a symlink, and without blocking on a FIFO put in its place."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)


def _read_verified(directory: Path, name: str, expected: FileRecord, hold: bool = True) -> bytes:
    """The bytes of ``name`` if they match ``expected`` (``b""`` when not ``hold``: hashed as a stream)."""
    file = directory / name
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in parts) or (
            PurePosixPath(*parts).as_posix() != name):  # fmt: skip
        raise CheckpointError(f"checkpoint manifest in {str(directory)!r} lists {name!r}, which is not a plain file "
                              "name inside the checkpoint")  # fmt: skip
    for depth in range(1, len(parts) + 1):  # a symlink anywhere on the way could lead outside the checkpoint
        if directory.joinpath(*parts[:depth]).is_symlink():
            raise CheckpointError(f"checkpoint file {str(file)!r} is a symlink (or lies under one); checkpoints hold "
                                  "only regular files")  # fmt: skip
    if not file.is_file():
        raise CheckpointError(f"checkpoint file {str(file)!r} listed in the manifest is missing")
    try:  # the name may have been swapped since the checks above: open no link, and only a regular file
        handle = open(file, "rb", opener=_no_link)  # noqa: SIM115  (closed by the with below)
    except OSError as error:
        raise CheckpointError(f"checkpoint file {str(file)!r} cannot be opened as a regular file "
                              f"({error.strerror or error})") from error  # fmt: skip
    with handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise CheckpointError(f"checkpoint file {str(file)!r} is not a regular file")
        if hold:
            data = handle.read()
            actual = hashlib.sha256(data).hexdigest()
        else:
            data, actual = b"", hashlib.file_digest(handle, "sha256").hexdigest()
    if actual != expected.sha256:
        raise CheckpointError(f"checkpoint file {str(file)!r} is corrupt: expected sha256 {expected.sha256}, "
                              f"got {actual}")  # fmt: skip
    return data


@dataclasses.dataclass(frozen=True, slots=True)
class RejectedCheckpoint:
    """A checkpoint the resolver skipped, and why."""

    path: Path
    reason: str

    @property
    def step(self) -> int:
        return step_of(self.path.name) or 0


def belonging(checkpoint: VerifiedCheckpoint, layout: RunLayout) -> VerifiedCheckpoint:
    """``checkpoint``, if its manifest says it was written by the run it is found in (else exit 4)."""
    if checkpoint.manifest.run_id != layout.run_id:
        raise CheckpointError(f"checkpoint {str(checkpoint.path)!r} was written by run {checkpoint.manifest.run_id!r}, "
                              f"not by run {layout.run_id!r} it sits in: it was copied in from another run, or this "
                              f"run's directory was renamed (if so, rename it back to "
                              f"{checkpoint.manifest.run_id!r})")  # fmt: skip
    return checkpoint


@dataclasses.dataclass(frozen=True, slots=True)
class CheckpointReceipts:
    """What a run's durable ``checkpoint`` receipts recorded (:func:`lit_psion.core.audit.receipted_checkpoints`).

    Receipts are appended in step order once each checkpoint is durable, so only the newest checkpoint
    can lack one (a kill between the two); a checkpoint older than a receipted one, or any checkpoint
    of a sealed chain, that has none was not written by the run's fit.
    """

    recorded: Mapping[int, tuple[str | None, str | None]] = dataclasses.field(default_factory=dict)
    """step -> (manifest sha256, weights sha256)."""
    sealed: bool = False
    chain: Path | None = None
    """The run's ``receipts.jsonl``: an unreceipted newest checkpoint is held to where its manifest anchors it."""
    broken: str | None = None
    """The chain's first problem before a torn last line (which a resume repairs), if it has one: what it records
    from that line on is not counted, and a checkpoint it does not record is not trusted (:func:`as_receipted`)."""
    anchored: frozenset[str] | None = None
    """The digests of the receipts up to run.json's recorded head (None when it records none the log holds): only the
    durable receipts among them count (one appended after it is vouched for by the log alone)."""
    rewritten: Mapping[int, tuple[str | None, str | None]] = dataclasses.field(default_factory=dict)
    """step -> the first durable receipt's digests after run.json's head, for a step no counted receipt records or
    one an attempt resumed from an earlier checkpoint writes again: what a fit killed before its next run.json
    write leaves, trusted only for a checkpoint whose manifest records that very head (:func:`as_receipted`)."""
    refit: frozenset[int] = frozenset()
    """Steps a counted receipt records that the last attempt, resumed from an earlier checkpoint, writes again."""
    run_head: str | None = None
    """run.json's receipt head, when the log holds it."""
    run_step: int | None = None
    """run.json's global step."""
    run_status: str | None = None
    """run.json's status."""
    run_failure: str | None = None
    """run.json's failure class (a failed run's)."""

    @property
    def newest(self) -> int | None:
        return max(self.recorded, default=None)


def as_receipted(checkpoint: VerifiedCheckpoint, receipts: CheckpointReceipts) -> VerifiedCheckpoint:
    """``checkpoint``, if its manifest and weights are the ones its durable checkpoint receipt recorded, or it is
    the newest checkpoint of an unsealed chain whose receipt a kill may have prevented.

    Raises:
        CheckpointError: it is not (exit 4).
        EvidenceError: it has no receipt in the part of the chain that verifies, and the rest does not (exit 5).
    """
    recorded = receipts.recorded.get(checkpoint.step)
    if recorded is None and receipts.broken is not None:
        yours = "registered now, does not read it" in receipts.broken  # (receipts verify imports no module of yours)
        raise EvidenceError(f"checkpoint {checkpoint.path.name} cannot be held to its run's receipts: "
                            f"{receipts.broken}{'' if yours else ' (python -m lit_psion receipts verify RUN_DIR)'}")
    if recorded is None:
        newest = receipts.newest
        if receipts.sealed or (newest is not None and newest > checkpoint.step):
            why = "the run's chain is sealed" if receipts.sealed else f"the chain receipts step {newest}"
            raise CheckpointError(f"checkpoint {checkpoint.path.name} has no durable checkpoint receipt, though {why}: "
                                  "the run's fit did not write it")  # fmt: skip
        if receipts.chain is not None and (problem := unanchored(checkpoint, receipts.chain)) is not None:
            if problem == NOT_IN_CHAIN and (how := cut_short(receipts.chain)) is not None:  # the log's fault
                raise ChainCutShort(f"{str(receipts.chain)!r} {how}, before the receipt head checkpoint "
                                    f"{checkpoint.path.name} records (the head was durable before the checkpoint "
                                    "was written): the log was cut short; restore it from a backup "
                                    "(python -m lit_psion receipts verify RUN_DIR)")  # fmt: skip
            if problem == NOT_IN_CHAIN:  # the log lost what the checkpoint anchors, or the checkpoint is a copy's
                raise EvidenceError(f"{str(receipts.chain)!r}: truncated: checkpoint {checkpoint.path.name} records "
                                    f"receipt head {checkpoint.manifest.receipts_head}, which is not in the log (the "
                                    "head was durable before the checkpoint was written): the log was cut, or the "
                                    "checkpoint is another copy of the run's; restore the log from a backup, or move "
                                    "the checkpoint out of the run")  # fmt: skip
            if problem == SUPERSEDED:
                raise SupersededCheckpoint(f"checkpoint {checkpoint.path.name} has no durable checkpoint receipt, and "
                                           f"{problem}: an attempt killed before its receipt left it, vouched for by "
                                           "nothing; the resumed attempt writes its step again")  # fmt: skip
            raise CheckpointError(f"checkpoint {checkpoint.path.name} has no durable checkpoint receipt, and "
                                  f"{problem}: the run's fit did not write it")  # fmt: skip
        if (problem := unreceipted_problem(checkpoint, receipts)) is not None:
            raise CheckpointError(f"checkpoint {checkpoint.path.name} has no durable checkpoint receipt up to the head "
                                  f"run.json records, and {problem}: the run's fit did not write it")  # fmt: skip
        return checkpoint
    digests = (checkpoint.manifest_sha256, checkpoint.weights_sha256)
    again = receipts.rewritten.get(checkpoint.step, digests if checkpoint.step in receipts.refit else None)
    if recorded != digests and again == digests and at_the_run_head(checkpoint, receipts):
        return checkpoint  # written again by an attempt resumed from an earlier checkpoint, killed before run.json
    if recorded != digests:
        raise CheckpointError(f"checkpoint {checkpoint.path.name}: its manifest or weights are not the ones its "
                              "durable checkpoint receipt recorded (it was replaced after it was written)")
    return checkpoint


def _tell_of_foreign_after(layout: RunLayout, step: int, rejected: list[RejectedCheckpoint] | None) -> None:
    """Name the checkpoint directories past ``step`` that another run wrote: a fit resumed from ``step`` replaces
    each when it reaches its step, so it is said (and receipted with the skipped ones), not done silently."""
    for path in layout.checkpoint_dirs():
        try:
            written_by = read_json(path / MANIFEST_FILE).get("run_id")
        except (OSError, ValueError, AttributeError, RecursionError):
            continue  # not a checkpoint this fit could mistake for its own: its own verdict in doctor
        if (step_of(path.name) or 0) > step and written_by != layout.run_id:
            reason = (f"written by run {written_by!r}, not this one (a fit resumed from step {step} replaces it at "
                      f"step {step_of(path.name)})")  # fmt: skip
            if rejected is not None:
                rejected.append(RejectedCheckpoint(path, reason))
            print(f"lit_psion: warning: {path}: {reason}", file=sys.stderr)


class ChainCutShort(CheckpointError):
    """A checkpoint whose recorded receipt head the run's log, ending in a torn line, no longer reaches: the log
    was cut (exit 5, as evidence that does not verify). A :class:`CheckpointError` still, so a resume falls back
    past it to an older checkpoint the kept log does reach, and repairs the log there (receipted)."""

    exit_code = EvidenceError.exit_code
    failure_class = EvidenceError.failure_class


def resolve_checkpoint(
    layout: RunLayout | str | Path,
    rejected: list[RejectedCheckpoint] | None = None,
    quiet: bool = False,
    receipted: CheckpointReceipts | None = None,
    resuming: bool = False,
) -> VerifiedCheckpoint:
    """The checkpoint to resume a run from, already verified: the pointed-to one, else the newest that verifies.

    Args:
        layout: The run (or its directory).
        rejected: If given, receives every checkpoint skipped on the way, with its reason.
        quiet: Do not print the fallback warning.
        receipted: If given, each checkpoint must also match its durable checkpoint receipt (:func:`as_receipted`).
        resuming: For ``--ckpt_path last``: a run with no checkpoint yet is told how to train instead, and of a
            paused run beside it that has one; other readers are told to give a run that has one.

    Raises:
        CheckpointError: no pointer, or no checkpoint that verifies (naming the pointed-to one's problem).
    """
    layout = layout if isinstance(layout, RunLayout) else RunLayout.of(layout)
    receipted = receipted or CheckpointReceipts()
    if layout.run_dir.is_symlink():  # (LIT_PSION_RUN_ID's run; latest_run.json's is refused as it is read)
        raise CheckpointError(linked(layout.run_dir, "a run"))
    layout.checkpoint_dirs()  # refuses a checkpoints/ that is a symlink, before the pointer in it is read
    layout.refuse_special_files()
    if layout.pointer.is_dir() and not layout.pointer.is_symlink():  # (a resume trained, then could not point)
        raise CheckpointError(f"{str(layout.pointer)!r} is a directory, not the run's checkpoint pointer: the pointer "
                              "could not move to a new checkpoint; move it away (a resume then falls back to the "
                              "newest checkpoint that verifies)")  # fmt: skip
    try:
        pointer = read_pointer(layout)
    except CheckpointError as error:
        pointer, problem = None, error
    else:
        problem = None
    if pointer is None and problem is None:
        if not layout.checkpoint_dirs() and receipted.newest is not None:
            raise CheckpointError(f"the checkpoints of run {layout.run_id!r} are gone: its receipts record durable "
                                  f"checkpoints up to step {receipted.newest}, but {str(layout.checkpoints)!r} holds "
                                  "none; restore them from a backup")  # fmt: skip
        if not layout.checkpoint_dirs():
            fix = ("to train, start a new run without --ckpt_path, or this one again from step 0 in its place "
                   f"(LIT_PSION_RUN_ID={layout.run_id} and no --ckpt_path); a run still training has one at its first "
                   "checkpoint step, one that stopped before it never will" + _continue_instead(layout)
                   if resuming else "give a run that has one (a run still training writes one at its first "
                   "checkpoint step; one that stopped before it never will)")  # fmt: skip
            raise CheckpointError(f"run {layout.run_id!r} has no durable checkpoint yet ({str(layout.pointer)!r} is "
                                  f"missing); {fix}")  # fmt: skip
        problem = CheckpointError(f"checkpoint pointer {str(layout.pointer)!r} is missing")  # the checkpoints are not
    pointed = layout.checkpoints / pointer.checkpoint if pointer is not None else None
    if pointer is not None:
        try:
            verified = as_receipted(belonging(verify_checkpoint(pointed, pointer.manifest_sha256), layout), receipted)
            if verified.step != pointer.step:
                raise CheckpointError(f"pointer {str(layout.pointer)!r} says step {pointer.step}, its checkpoint's "
                                      f"manifest says {verified.step}")  # fmt: skip
            if receipted.newest is None or verified.step >= receipted.newest:
                if not quiet:  # (a fit's or an evaluation's resolve: a check of the run reports the directory itself)
                    _tell_of_foreign_after(layout, verified.step, rejected)
                return verified
            problem = CheckpointError(f"pointer {str(layout.pointer)!r} names step {verified.step}, but the chain "
                                      f"receipts a durable checkpoint at step {receipted.newest}: it was moved back")
            pointed = None  # still a candidate below, in step order
        except CheckpointError as error:
            problem = error
    skipped = [RejectedCheckpoint(pointed, str(problem))] if pointed is not None else []
    for candidate in reversed(layout.checkpoint_dirs()):
        if candidate == pointed:
            continue
        try:
            verified = as_receipted(belonging(verify_checkpoint(candidate), layout), receipted)
        except CheckpointError as error:
            skipped.append(RejectedCheckpoint(candidate, str(error)))
            continue
        if rejected is not None:
            rejected.extend(skipped)
        if not quiet:
            print(f"lit_psion: warning: {problem}; using {candidate.name}, the newest checkpoint that "
                  "verifies", file=sys.stderr)  # fmt: skip
        return verified
    raise problem


def _continue_instead(layout: RunLayout) -> str:
    """A new run stopped or failed before its first checkpoint hides the one to continue: name it (layout's order)."""
    if (found := layout.sibling_to_continue()) is None:
        return ""
    name, record = found
    longer = " and a larger --trainer.max_steps" if record.get("status") == "completed" else ""
    return (f"; run {name} in the same root has one ({record.get('status')} at step {record.get('global_step')}): "
            f"continue it with LIT_PSION_RUN_ID={name} and no --ckpt_path{longer}")
