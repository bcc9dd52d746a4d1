"""Checking everything a run directory holds, one verdict per artifact (``python -m lit_psion doctor``).

What a verdict proves is what docs/receipts.md's "What verify proves" says: every file matches the
digest recorded when it was written; the receipt chain is complete from its run-bound genesis to
a head anchored in ``run.json``, in every durable checkpoint's manifest and, for a completed run,
in its terminal seal; every path the pointer names stays inside the run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lit_psion.core.chain import VerifyResult, log_lines, parse_receipt, torn_tail, verify_log
from lit_psion.core.checkpoint import (
    MANIFEST_FILE,
    RejectedCheckpoint,
    VerifiedCheckpoint,
    as_receipted,
    belonging,
    resolve_checkpoint,
    verify_checkpoint,
)
from lit_psion.core.digest import sha256_file
from lit_psion.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    EvidenceError,
    LitPsionError,
    SupersededCheckpoint,
)
from lit_psion.core.files import read_json
from lit_psion.core.layout import RECEIPTS_FILE, RunLayout, refuse_a_stray_checkpoint, step_of
from lit_psion.core.lock import LOCK_FILE, unusable_lock
from lit_psion.core.manifest import read_data_manifest
from lit_psion.core.pointer import read_pointer
from lit_psion.core.receipted import receipted_checkpoints
from lit_psion.core.run import RunRecord, RunStatus
from lit_psion.core.skip_list import check_skip_list


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """One artifact's check: ``ok``, or the error class it failed with (its exit code) and why."""

    artifact: str
    ok: bool
    detail: str
    exit_code: int = 0

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.artifact}: {self.detail}"

    def refusal(self, run_id: str, consequence: str) -> LitPsionError:
        """This failed verdict as the error a command refuses with: same class (exit code), same words."""
        kind = {error.exit_code: error for error in (DataError, CheckpointError)}.get(self.exit_code, EvidenceError)
        detail = self.detail
        for advice in ("; restore it from a backup",):  # said by the consequence too: say it once
            if advice[2:] in consequence and detail.endswith(advice):
                detail = detail.removesuffix(advice)
        return kind(f"run {run_id!r}: {self.artifact}: {detail}; {consequence}")


def _fail(artifact: str, error: LitPsionError) -> Verdict:
    return Verdict(artifact, False, str(error), error.exit_code)


def audit_receipts(layout: RunLayout, record: RunRecord) -> Verdict:
    """The chain from the run's genesis to its anchors: run.json's head, every checkpoint's head, the seal."""
    try:
        result = check_chain(layout, record)
    except EvidenceError as error:
        return _fail(layout.receipts.name, error)
    sealed, unknown = ", sealed" if result.sealed else "", ", ".join(map(repr, sorted(result.unknown_kinds)))
    them = "them" if len(result.unknown_kinds) > 1 else "it"
    fields = f"; the fields of {unknown} were not checked (no class here registers {them})" if unknown else ""
    return Verdict(layout.receipts.name, True, f"{result.count} receipts from the run's genesis{sealed}, "
                                               f"head {result.head}{fields}")  # fmt: skip


def check_chain(
    layout: RunLayout,
    record: RunRecord,
    before_torn_tail: bool = False,
    known_heads: dict[str, str | None] | None = None,
) -> VerifyResult:
    """Verify the run's chain and every anchor of it.

    Args:
        before_torn_tail: check only what comes before a torn last line (a resume checks this, then repairs).
        known_heads: checkpoint name -> its recorded head, for manifests already read and verified (a resume's).

    Raises:
        EvidenceError: the first problem, by line or by anchor.
    """
    if not layout.receipts.is_file():
        what = "is not a file" if layout.receipts.exists() or layout.receipts.is_symlink() else "is missing"
        raise EvidenceError(f"{layout.receipts} {what}")
    known_heads = known_heads or {}
    torn = len(torn_tail(layout.receipts)) if before_torn_tail else 0
    upto = layout.receipts.stat().st_size - torn if torn else None
    result = verify_log(layout.receipts, expected_head=record.receipts_head, run_id=layout.run_id, upto=upto)
    if not result.ok:
        raise EvidenceError(f"{layout.receipts}: {result.describe()}")
    for checkpoint in layout.checkpoint_dirs():  # a damaged one too: its manifest's head still anchors the log
        head = known_heads[checkpoint.name] if checkpoint.name in known_heads else _recorded_head(checkpoint, layout)
        if head is not None and head not in result.digests:
            raise EvidenceError(f"{layout.receipts}: truncated: checkpoint {checkpoint.name} recorded head {head}, "
                                "which is not in the log (the head was durable before the checkpoint was written): "
                                "the log was cut, or the checkpoint is another copy of the run's; restore the log "
                                "from a backup, or move the checkpoint out of the run")  # fmt: skip
    ended = (RunStatus.COMPLETED, RunStatus.PAUSED, RunStatus.FAILED)
    if record.status in ended and record.receipts_head not in (None, result.head):
        raise EvidenceError(f"{layout.receipts}: after_end: the run {record.status} with head "
                            f"{record.receipts_head}, but receipts follow it (appended after the run ended)")
    if record.status in ended and record.receipts_head is None and result.count > 0:
        # A run that ended wrote its head (its log's, the genesis at least) with its status: a null one was cleared.
        raise EvidenceError(f"{layout.receipts}: after_end: run.json says the run {record.status} with no receipts, "
                            f"but the log holds {result.count} (its head was cleared, or receipts were appended)")
    if record.status == RunStatus.COMPLETED and not result.sealed:
        raise EvidenceError(f"{layout.receipts}: run.json says the run completed, but the chain does not end with "
                            "its seal (receipts were cut off or appended)")  # fmt: skip
    return result


def _recorded_head(checkpoint: Path, layout: RunLayout) -> str | None:
    """The head a checkpoint of this run recorded (a checkpoint copied in from another run anchors nothing)."""
    try:
        manifest = read_json(checkpoint / MANIFEST_FILE)
        return manifest.get("receipts_head") if manifest.get("run_id") == layout.run_id else None
    except (OSError, ValueError, AttributeError, RecursionError):
        return None  # an unreadable manifest is the checkpoint's own verdict


def verify_in_its_run(path: Path) -> VerifiedCheckpoint:
    """The checkpoint directory ``path``, verified against its manifest and, when it sits in a run's
    ``checkpoints/``, held to that run: written by it, and the one its durable receipt recorded.

    Raises:
        CheckpointError: a file differs from the manifest, another run wrote it, or it was replaced (exit 4).
        EvidenceError: it sits in a run whose run.json is gone, or whose chain does not verify (exit 5).
    """
    checkpoint = verify_checkpoint(path)
    if (lost := lost_run_record(checkpoint)) is not None:
        raise EvidenceError(f"{lost}: without it the run's receipts vouch for none of its checkpoints; restore it from "
                            "a backup")  # fmt: skip
    refuse_a_stray_checkpoint(path)
    path = path.resolve()  # `.`, `step-000006` from inside the run, or a path through a link: held to its run
    layout = RunLayout.of(path.parent.parent)
    if layout.is_run() and path.parent.resolve() == layout.checkpoints.resolve():
        layout.refuse_special_files()
        belonging(checkpoint, layout)
        as_receipted(checkpoint, receipted_checkpoints(layout))
        hold_to_its_chain(layout)
    return checkpoint


def lost_run_record(checkpoint: VerifiedCheckpoint) -> str | None:
    """What is wrong when ``checkpoint`` sits in a run directory that lost its run.json (the run wrote it: its manifest
    names the directory's run id, or the run's receipts are still there), else None. Without run.json the receipts
    vouch for none of the run's checkpoints: given by path, one is held to its manifest alone, and weights swapped
    under a re-hashed manifest would pass. (A checkpoint copied out of its run is a checkpoint on its own.)"""
    layout = RunLayout.of((path := checkpoint.path.resolve()).parent.parent)
    if layout.is_run() or path.parent.name not in {layout.checkpoints.name, layout.consolidated.name}:
        return None
    if checkpoint.manifest.run_id != layout.run_id and not any(p.exists() or p.is_symlink() for p in (
            layout.run_file, layout.receipts)):  # fmt: skip
        return None
    return (f"checkpoint {str(path)!r} is in run {layout.run_id!r}, whose {layout.run_file.name} "
            f"{'is not a file' if layout.run_file.exists() or layout.run_file.is_symlink() else 'is missing'}")


def hold_to_its_chain(layout: RunLayout) -> None:
    """The run's receipt chain against its anchors (run.json's head, every checkpoint's, the seal), as a resume and
    ``receipts verify`` hold it, before one of its checkpoints given by path is trusted: the receipts it was held to
    are vouched for only by a whole chain (a log cut below run.json's head and appended to is not). Not while a fit
    writes the run (its chain changes under the reader), nor for a run that kept no receipts.

    Raises:
        EvidenceError: the chain does not verify (exit 5).
    """
    from lit_psion.core.lock import lock_holder

    if lock_holder(layout.run_dir) is not None or not (layout.receipts.exists() or layout.receipts.is_symlink()):
        return
    check_chain(layout, RunRecord.load(layout), before_torn_tail=True)


def changed_records(layout: RunLayout) -> list[Verdict]:
    """The run's description files (config.yaml, the data manifest, the tokenizer) that no longer match what run.json
    records; a config.yaml the run's latest attempts wrote (:attr:`Recorded.current_configs`) is not changed."""
    recorded = Recorded.of(layout)
    return [verdict for verdict in audit_files(layout, RunRecord.load(layout), recorded) if not verdict.ok
            and not (verdict.artifact == layout.config.name and layout.config.is_file()
                     and sha256_file(layout.config) in recorded.current_configs)]  # fmt: skip


TRAINED = frozenset({"trainer_step", "transaction", "growth"})  # and a rank's checkpoint receipt (see below)
"""Receipts an attempt writes only after a training step, so after it wrote its config.yaml (at training start)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Recorded:
    """What the run's ``training_run`` receipts record of its description files, read from its log in one pass."""

    configs: frozenset[str]
    """Every ``config_digest``: the configs the run's attempts started with."""
    current_configs: frozenset[str]
    """The ones config.yaml may hold now: those of the last attempt that trained and of every attempt after it (one
    stopped before training may or may not have written its config.yaml; none wrote another afterwards). Every
    attempt's when no receipt shows which trained (step receipts off)."""
    manifests: frozenset[str]
    """Every ``data_manifest_digest``."""
    conflicts: tuple[str, ...] = ()
    """A ``training_run`` receipt that records another config or data manifest digest than its attempt's first
    (an attempt trains with one of each): a tail re-hashed over a forged record. Its digests are not counted."""

    @classmethod
    def of(cls, layout: RunLayout) -> Recorded:
        attempts: list[tuple[set[str], set[str], bool]] = []  # per attempt: configs, manifests, whether it trained
        conflicts: list[str] = []
        lines = log_lines(layout.receipts.read_text(encoding="utf-8", errors="replace")) \
            if layout.receipts.is_file() else []  # fmt: skip
        for line in lines:
            try:
                receipt = parse_receipt(line)
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
                continue
            body = receipt.body
            if receipt.kind == "training_run":
                if body.get("event") in ("started", "resumed") or not attempts:
                    attempts.append((set(), set(), False))
                for digests, field in zip(attempts[-1][:2], ("config_digest", "data_manifest_digest"), strict=True):
                    if not isinstance(value := body.get(field), str):
                        continue
                    if digests and value not in digests:
                        conflicts.append(f"receipt {receipt.seq} ({body.get('event')}) records {field} {value}, "
                                         f"its attempt's first {next(iter(digests))}")  # fmt: skip
                    else:
                        digests.add(value)
            elif attempts and not attempts[-1][2] and (receipt.kind in TRAINED or (
                    receipt.kind == "checkpoint" and str(body.get("writer", "")).startswith("rank"))):  # fmt: skip
                attempts[-1] = (*attempts[-1][:2], True)  # (the resolver's receipts come before config.yaml)
        trained = [index for index, (_, _, did) in enumerate(attempts) if did]
        since = trained[-1] if trained else 0
        return cls(configs=frozenset().union(*(a[0] for a in attempts)),
                   current_configs=frozenset().union(*(a[0] for a in attempts[since:])),
                   manifests=frozenset().union(*(a[1] for a in attempts)), conflicts=tuple(conflicts))  # fmt: skip


def audit_checkpoints(layout: RunLayout) -> list[Verdict]:
    """Every checkpoint against its manifest and against the digests its checkpoint receipt recorded, and
    the pointer (or the fallback a resume would take)."""
    verdicts, receipted = [], receipted_checkpoints(layout)
    for checkpoint in layout.checkpoint_dirs():
        name = f"{layout.checkpoints.name}/{checkpoint.name}"
        try:
            verified = verify_checkpoint(checkpoint)
        except CheckpointError as error:
            verdicts.append(_fail(name, error))
            continue
        if verified.manifest.run_id != layout.run_id:
            verdicts.append(Verdict(name, False, f"written by run {verified.manifest.run_id!r}, not this run",
                                    CheckpointError.exit_code))  # fmt: skip
            continue
        try:
            as_receipted(verified, receipted)
        except SupersededCheckpoint as error:  # a kill's leftover, not a forgery: nothing loads it
            verdicts.append(Verdict(name, True, f"{len(verified.manifest.files)} files match the manifest; not vouched "
                                    f"for ({str(error).split(': ', 1)[-1]})"))  # fmt: skip
            continue
        except (CheckpointError, EvidenceError) as error:
            verdicts.append(_fail(name, error))
            continue
        verdicts.append(Verdict(name, True, f"{len(verified.manifest.files)} files match the manifest and its receipt"))
    newest = receipted.newest
    on_disk = [step_of(path.name) or 0 for path in layout.checkpoint_dirs()]
    if newest is not None and not layout.checkpoint(newest).is_dir() and max(on_disk, default=-1) < newest:
        # (a kill between retention and the newer checkpoint's receipt leaves that newer one, unreceipted)
        verdicts.append(Verdict(layout.checkpoint(newest).relative_to(layout.run_dir).as_posix(), False,
                                "missing: the newest durable checkpoint the receipts record is gone; restore it from a "
                                "backup", CheckpointError.exit_code))  # fmt: skip
    try:
        pointer = read_pointer(layout)
        if pointer is None and not verdicts:
            return [Verdict(layout.pointer.name, True, "no checkpoint yet")]
        rejected: list[RejectedCheckpoint] = []
        resumed = resolve_checkpoint(layout, rejected, quiet=True, receipted=receipted)
        for index, verdict in enumerate(verdicts):  # damaged, and older than what a resume loads: nothing needs it
            if not verdict.ok and (step_of(verdict.artifact.rsplit("/", 1)[-1]) or resumed.step) < resumed.step:
                verdicts[index] = dataclasses.replace(verdict, detail=f"{verdict.detail} (a resume skips it for "
                                                      f"{resumed.path.name}: delete it if no backup holds it)")
        ok = resumed.path.name == pointer.checkpoint if pointer is not None else not receipted.recorded
        if pointer is None and ok:  # the pointer is written before a checkpoint's durable receipt
            detail = f"none yet (a kill before the first pointer leaves that); a resume loads {resumed.path.name}"
        elif ok:
            detail = f"a resume loads {resumed.path.name}"
        elif pointer is None:
            detail = ("missing, though the receipts record a durable checkpoint; a resume falls back to "
                      f"{resumed.path.name}")
        else:
            newer = receipted.newest is not None and pointer.step < receipted.newest
            why = next((r.reason for r in rejected if r.path.name == pointer.checkpoint),
                       f"the receipts record a newer durable checkpoint, step {receipted.newest}" if newer
                       else "it does not verify")  # fmt: skip
            detail = f"names {pointer.checkpoint}, which a resume does not use ({why}); it loads {resumed.path.name}"
        verdicts.append(Verdict(layout.pointer.name, ok, detail, 0 if ok else CheckpointError.exit_code))
    except (CheckpointError, EvidenceError) as error:
        verdicts.append(_fail(layout.pointer.name, error))
    return verdicts


def audit_files(layout: RunLayout, record: RunRecord, recorded: Recorded | None = None) -> list[Verdict]:
    """The run's description files against the digests run.json and its receipts record; the data manifest's digest
    recomputed from its content, and ``tokenizer.json`` against the digest the data manifest records."""
    verdicts, recorded = [], recorded or Recorded.of(layout)
    for conflict in recorded.conflicts[:1]:
        verdicts.append(Verdict(layout.receipts.name, False, f"{conflict}: one attempt trains with one config and "
                                "one data manifest; the receipts were rewritten over a forged record",
                                EvidenceError.exit_code))  # fmt: skip
    for path, digest in ((layout.config, record.config_digest), (layout.data_manifest, record.data_manifest_digest)):
        if digest is not None and not path.is_file():
            verdicts.append(Verdict(path.name, False, f"missing: run.json records its digest ({digest[:16]}...); "
                                    "restore it from a backup", DataError.exit_code))  # fmt: skip
    if record.config_digest is not None and layout.config.is_file():
        actual, wanted = sha256_file(layout.config), record.config_digest
        ok = actual == wanted
        detail = f"config digest {actual} " + ("matches run.json's" if ok else f"differs from run.json's {wanted}")
        if ok and recorded.configs and actual not in recorded.configs:  # run.json rewritten to match an edited one
            ok, detail = False, f"{detail}, but no training_run receipt records it: the run never trained with it"
        elif ok and recorded.configs and actual not in recorded.current_configs:  # an earlier attempt's, put back
            ok, detail = False, (f"{detail}, but it is an earlier attempt's: the run trained on after it with "
                                 "another config.yaml, which a resume would compare its settings with")
        elif not ok and {actual, wanted} <= recorded.current_configs:  # a resume killed before it wrote its own
            ok, detail = True, f"{detail}: the attempt's before, which a resume accepts (the last one stopped first)"
        verdicts.append(Verdict(layout.config.name, ok, detail, 0 if ok else DataError.exit_code))
    if record.data_manifest_digest is None or not layout.data_manifest.is_file():
        return verdicts
    name = layout.data_manifest.name
    try:
        payload, manifest, digest = read_data_manifest(layout.data_manifest)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:
        return [*verdicts, Verdict(name, False, f"unreadable: {type(error).__name__}: {error}", DataError.exit_code)]
    ok = digest == record.data_manifest_digest == payload.get("digest")
    detail = f"data manifest content digest {'matches' if ok else 'differs from'} run.json's and its own ({digest})"
    if ok and recorded.manifests and digest not in recorded.manifests:
        ok, detail = False, f"{detail}, but no training_run receipt records it: the run never trained on it"
    verdicts.append(Verdict(name, ok, detail, 0 if ok else DataError.exit_code))
    if manifest is not None and manifest.tokenizer_digest is not None and not layout.tokenizer.is_file():
        verdicts.append(Verdict(layout.tokenizer.name, False, "missing: the data manifest records its digest "
                                f"({manifest.tokenizer_digest[:16]}...); restore it from a backup",
                                DataError.exit_code))  # fmt: skip
    if manifest is not None and layout.tokenizer.is_file():
        actual = sha256_file(layout.tokenizer)
        ok = actual == manifest.tokenizer_digest
        said = "matches the data manifest's" if ok else f"differs from the data manifest's {manifest.tokenizer_digest}"
        verdicts.append(Verdict(layout.tokenizer.name, ok, f"tokenizer digest {actual} {said}",
                                0 if ok else DataError.exit_code))  # fmt: skip
    return verdicts


def audit_run(layout: RunLayout) -> list[Verdict]:
    """One verdict per artifact of the run: run.json, the chain and its anchors, checkpoints, files."""
    try:
        record = RunRecord.load(layout)
    except (OSError, ValueError, TypeError, KeyError) as error:
        # The rest is still checked on its own terms: the chain without run.json's head, the checkpoints against
        # their manifests and receipts. Only the files whose digests run.json holds are left unjudged.
        unread = RunRecord(run_id=layout.run_id, status=RunStatus.INITIALIZING)
        return [Verdict(layout.run_file.name, False, f"unreadable: {error}", EvidenceError.exit_code),
                audit_receipts(layout, unread), *audit_checkpoints(layout), *audit_consolidated(layout),
                *audit_skip_list(layout)]  # fmt: skip
    verdicts = [audit_record(layout, record), audit_receipts(layout, record), *audit_checkpoints(layout),
                *audit_files(layout, record), *audit_consolidated(layout), *audit_skip_list(layout)]  # fmt: skip
    for path in (p for p in (layout.run_file, layout.config, layout.data_manifest, layout.tokenizer) if p.is_symlink()):
        # its content is held to the chain all the same, but a file outside the run can change under it (a resume
        # writes the file in the link's place), as a linked receipt log or metrics.csv can
        verdicts = [v for v in verdicts if v.artifact != path.name or not v.ok] + [linked_record(path)]
    if (lock := unusable_lock(layout.run_dir)) is not None:  # last: the evidence's verdicts decide the exit code
        verdicts.append(Verdict(LOCK_FILE, False, lock, ConfigError.exit_code))
    return verdicts


def linked_record(path: Path) -> Verdict:
    """The verdict on a run's record that is a symlink."""
    return Verdict(path.name, False, f"a symlink (to {str(path.readlink())!r}): a run's records are its own files; "
                   "put the file it points to in its place", EvidenceError.exit_code)  # fmt: skip


def audit_record(layout: RunLayout, record: RunRecord, against_pointer: bool = True) -> Verdict:
    """run.json against its directory and chain: run id; a sealed chain's status and step; the last training_run
    receipt's model signature and stage; a step no older than the pointer's (unless not ``against_pointer``: a
    resume judges a pointer ahead of run.json by the checkpoint it names); a failure only if failed; an attempt."""
    problems = []
    if record.run_id != layout.run_id:
        problems.append(f"it names run {record.run_id!r}, but its directory is {layout.run_id!r} (a run directory "
                        "keeps its run id's name: rename it back)")  # fmt: skip
    seal, last_run, head = None, None, None
    if layout.receipts.is_file():
        for line in log_lines(layout.receipts.read_text(encoding="utf-8", errors="replace")):
            try:
                receipt = parse_receipt(line)
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
                continue  # the chain's own verdict names a bad line
            seal = receipt.body if receipt.kind == "chain_seal" else seal if receipt.kind == "chain_repair" else None
            last_run, head = receipt.body if receipt.kind == "training_run" else last_run, receipt.digest
    # Written at or after the seal (its head is the chain's last), run.json must say what the seal says; a kill
    # between the seal's append and run.json's write leaves an earlier head and status, which a resume repairs.
    if seal is not None and record.receipts_head == head:
        if record.status != RunStatus.COMPLETED:
            problems.append(f"it says {record.status}, but the chain is sealed: the run completed")
        if record.global_step != seal.get("step"):
            problems.append(f"it says step {record.global_step}, but the seal says step {seal.get('step')}")
    configured = (last_run or {}).get("config_digest")  # run.json alone differs (config.yaml as trained; written after)
    if configured not in (None, record.config_digest) and record.receipts_head == head and layout.config.is_file() and (
            sha256_file(layout.config) == configured):  # (both differing: config.yaml's own verdict says so, exit 3)
        problems.append(f"its config_digest is not the last training_run receipt's ({str(configured)[:16]}...)")
    if (signed := (last_run or {}).get("model_signature")) is not None and signed != record.model_signature:
        problems.append(f"its model_signature is not the one the last training_run receipt records ({signed})")
    if (staged := (last_run or {}).get("stage_id")) is not None and staged != record.stage:
        problems.append(f"it says stage {record.stage!r}, but the last training_run receipt records {staged!r}")
    if record.status != RunStatus.FAILED and (record.failure, record.failure_class) != (None, None):
        problems.append(f"it says {record.status}, but records a failure ({record.failure_class}: {record.failure})")
    if record.attempts < 1:  # (the record is written by an attempt, which counts itself first)
        problems.append(f"it counts {record.attempts} attempts, but a run's record is written by one")
    try:
        pointer = read_pointer(layout) if against_pointer else None
    except CheckpointError:
        pointer = None  # the pointer's own verdict
    pointed = layout.checkpoints / pointer.checkpoint / MANIFEST_FILE if pointer is not None else None
    if pointed is not None and not (pointed.is_file() and sha256_file(pointed) == pointer.manifest_sha256):
        pointer = None  # names no checkpoint it vouches for: the pointer's own verdict, not run.json's
    if pointer is not None and pointer.step > record.global_step:
        problems.append(f"it says step {record.global_step}, but the pointed-to checkpoint is step {pointer.step}")
    if problems:
        return Verdict(layout.run_file.name, False, f"does not match the run: {'; '.join(problems)}",
                       EvidenceError.exit_code)  # fmt: skip
    where = "after" if record.status == "failed" else "at"  # a failure is in the step after the last one done
    ended = (f" (its chain is sealed at step {seal.get('step')}: the fit was stopped after its seal, before this "
             "record; `fit --ckpt_path last` with the same --trainer.max_steps completes it)"
             if seal is not None and record.status != RunStatus.COMPLETED else "")  # fmt: skip
    return Verdict(layout.run_file.name, True, f"{record.status} {where} step {record.global_step}{ended}")


def consolidation_log(layout: RunLayout) -> Verdict:
    """The receipt log of the run's consolidated models (``ckpt consolidate``), checked like a run's chain."""
    log = layout.consolidated / RECEIPTS_FILE
    name = f"{layout.consolidated.name}/{RECEIPTS_FILE}"
    if not log.is_file():
        return Verdict(name, False, f"missing: the consolidated copies have no receipts; move {name[:-14]} aside",
                       EvidenceError.exit_code)  # fmt: skip
    result = verify_log(log)
    return Verdict(name, result.ok, result.describe(), 0 if result.ok else EvidenceError.exit_code)


def audit_consolidated(layout: RunLayout) -> list[Verdict]:
    """The run's consolidated models, if any: their receipt log, and each copy against its manifest and receipt."""
    if not layout.consolidated.is_dir():
        return []
    log = consolidation_log(layout)
    verdicts = [log]
    receipted: set[str] = set()
    if log.ok:
        for line in log_lines((layout.consolidated / RECEIPTS_FILE).read_text(encoding="utf-8")):
            receipt = parse_receipt(line)
            if receipt.kind == "checkpoint_consolidate":
                receipted.add(receipt.body.get("manifest_digest"))
    for path in sorted(p for p in layout.consolidated.glob("step-*") if p.is_dir()):
        name = f"{layout.consolidated.name}/{path.name}"
        try:
            copy = verify_checkpoint(path)
        except CheckpointError as error:
            verdicts.append(_fail(name, error))
            continue
        if copy.manifest_sha256 in receipted:
            verdicts.append(Verdict(name, True, f"{len(copy.manifest.files)} files match the manifest and its "
                                                "consolidation receipt"))  # fmt: skip
        else:
            verdicts.append(Verdict(name, False, "its manifest is not one a verifying consolidation receipt recorded "
                                                 f"(replaced after it was written); move {name} aside, then "
                                                 "consolidate again",
                                    CheckpointError.exit_code))  # fmt: skip
    return verdicts


def audit_skip_list(layout: RunLayout) -> list[Verdict]:
    """The run's skip list, if any, against its receipts (:func:`check_skip_list`)."""
    path = layout.skip_list
    try:
        backed, pending = check_skip_list(layout)
    except EvidenceError as error:
        return [_fail(path.name, error)]
    if not path.exists() and not path.is_symlink():
        return []  # none, and the receipts record no restore that would have written one
    steps = len({entry.step for entry in backed})
    later = f"; {len(pending)} listed past the chain's last transaction, which a resume drops" if pending else ""
    return [Verdict(path.name, True, f"{len(backed)} batch(es) at {steps} step(s), each a rollback the receipts "
                                     f"record{later}")]  # fmt: skip

