"""``window status`` and ``window verify``: what the program holds, and proof that its records agree.

``verify_program`` checks, for every window: its receipt chain from genesis to the head ``window.json``
records; that every state receipt names the plan's digest and the last one is the recorded state;
that ``dispositions.json`` and ``promotion.json`` say what the receipts say; that each window's input
revision is the revision the one before it left (the base's for the first); that every candidate
revision verifies against its aggregation receipt; that every accepted contribution's two files are the
ones its seal receipt records; and that the pointer names the last window's outcome. Any difference is an
EvidenceError (exit 5) or a CheckpointError (exit 4) naming it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lit_psion.core import sha256_file
from lit_psion.core.chain import log_lines, parse_receipt
from lit_psion.core.errors import EvidenceError, LitPsionError
from lit_psion.core.layout import RECEIPTS_FILE
from lit_psion.core.text import shell_words
from lit_psion.core.windows import ACCEPTED, RECONCILED, SEALED
from lit_psion.windows.program import (
    ADAPTER,
    BASE_REVISION,
    CONTRIBUTION,
    DISPOSITIONS,
    PROMOTION,
    Program,
    next_slice,
    record,
    verify_window_chain,
)


def shaped(reader: Callable[[Path], dict[str, Any]]) -> Callable[[Path], dict[str, Any]]:
    """``reader`` of a program's records, with a record of the wrong shape (a field null, a list where a mapping
    goes, a state no window has) reported as evidence that does not verify (exit 5), not as a crash inside it."""

    @functools.wraps(reader)
    def read(root: Path) -> dict[str, Any]:
        try:
            return reader(root)
        except LitPsionError:
            raise
        except (TypeError, KeyError, AttributeError, ValueError, IndexError) as error:
            raise EvidenceError(f"a record of window program {str(root)!r} is not of the shape its writer gives it "
                                f"({type(error).__name__}: {error}); restore the program's records from a backup"
                                ) from error  # fmt: skip

    return read


@shaped
def program_status(root: Path) -> dict[str, Any]:
    program = Program(root)
    program.settings()
    windows = []
    for window_id in program.window_ids():
        plan, state = program.plan(window_id), program.state(window_id)
        contributions = program.window_dir(window_id) / "contributions"
        submitted = sorted(p.name for p in contributions.iterdir() if not p.name.startswith(".")) if (
            contributions.is_dir()) else []  # fmt: skip
        entry: dict[str, Any] = {"window": window_id, "state": state, "input_revision": plan.input_revision,
                                 "assignments": {a.assignment_id: {"contributor": a.contributor,
                                                                   "slice": a.slice.index,
                                                                   **({"replay_of": a.replay_of} if a.replay_of
                                                                      else {})} for a in plan.assignments},
                                 "submitted": submitted}  # fmt: skip
        path = program.window_dir(window_id) / DISPOSITIONS
        if path.is_file():
            counts: dict[str, int] = {}
            for e in record(path)["assignments"].values():
                counts[e["disposition"]] = counts.get(e["disposition"], 0) + 1
            entry["dispositions"] = counts
        if (program.window_dir(window_id) / PROMOTION).is_file():
            promotion = record(program.window_dir(window_id) / PROMOTION)
            entry |= {"decision": promotion["decision"], "reasons": promotion["reasons"], "scores": promotion["scores"]}
        windows.append(entry)
    last = windows[-1] if windows else None
    state = last["state"] if last else None
    at = shell_words(root, last["window"]) if last else ""
    hint = {None: f"window run {shell_words(root)}", "planned": f"window open {at}",
            "active": f"window close {at} (contributors: window contribute {at} aNN)", "sealed": f"window close {at}",
            "scored": f"window close {at}", "reconciled": f"window run {shell_words(root)}"}  # fmt: skip
    return {"root": str(root), "revision": program.pointer(), "windows": windows,
            "next": f"python -m lit_psion {hint[state]}"}


@shaped
def verify_program(root: Path) -> dict[str, Any]:
    """Check the program's records against each other and its receipts (see the module docstring)."""
    program = Program(root)
    program.require()
    next_slice(program)
    program.tokenizer()
    tokenizer = record(program.settings_path, ("tokenizer_sha256",))["tokenizer_sha256"]
    pointer = program.pointer()
    revision = _base_revision(program)
    receipts_total, promoted_by = 0, None
    for window_id in program.window_ids():
        verify_window_chain(program, window_id)
        if (named := program.state_record(window_id).get("window_id", window_id)) != window_id:
            raise EvidenceError(f"{window_id}: window.json is the record of window {named!r}; it was copied or "
                                "edited")  # fmt: skip
        plan = program.plan(window_id)
        lines = log_lines((program.window_dir(window_id) / RECEIPTS_FILE).read_text())
        receipts = [parse_receipt(line) for line in lines if line.strip()]
        receipts_total += len(receipts)
        states = [r.body for r in receipts if r.kind == "window_state"]
        where = f"{window_id}"
        if any(body["plan_digest"] != plan.digest for body in states):
            raise EvidenceError(f"{where}: plan.json is not the plan its receipts name (it was edited after planning)")
        planned = (states[0].get("detail") or {}).get("tokenizer_sha256") if states else None
        if planned is not None and planned != tokenizer:  # (a window planned before it was receipted names none)
            raise EvidenceError(f"{where} was planned with tokenizer {planned[:12]}..., but program.json records "
                                f"{str(tokenizer)[:12]}... (tokenizer.json swapped with its record): restore both")
        if not states or states[-1]["state"] != program.state(window_id):
            ahead = states and states[-1]["state"] == RECONCILED != program.state(window_id)
            raise EvidenceError(f"{where}: window.json says {program.state(window_id)!r}, its receipts end at "
                                f"{states[-1]['state'] if states else 'nothing'!r}" + (
                                    f"; a close was cut short: python -m lit_psion window close "
                                    f"{shell_words(root, window_id)} finishes it" if ahead else ""))  # fmt: skip
        if plan.input_revision != revision:
            raise EvidenceError(f"{where} was planned from revision {plan.input_revision[:12]}..., but the revision "
                                f"before it was {revision[:12]}...")  # fmt: skip
        disposed = {r.body["assignment_id"]: r.body for r in receipts
                    if r.kind == "adapter_contribution" and r.body["event"] == "disposed"}  # fmt: skip
        if disposed:
            dispositions = record(program.window_dir(window_id) / DISPOSITIONS, ("assignments",))
            recorded = dispositions["assignments"]
            if set(recorded) != set(disposed) or (dispositions.get("window_id"), dispositions.get("plan_digest")) != (
                    window_id, plan.digest):  # fmt: skip
                raise EvidenceError(f"{where}: dispositions.json is not the record of its receipts (assignments "
                                    f"{sorted(recorded)}, receipts {sorted(disposed)}; or another window or plan)")
            for aid, body in disposed.items():
                entry = recorded[aid]
                fields = ("disposition", "artifact_digest", "reasons", "evidence", "contributor", "metadata_digest",
                          "summary")  # fmt: skip
                receipted_content = (body.get("evidence") or {}).get("content_digest")
                if any(_plain(entry.get(k)) != _plain(body.get(k)) for k in fields) or entry.get("eligible") != (
                        body.get("aggregation_eligible")) or (receipted_content is not None and entry.get(
                        "content_digest") != receipted_content):  # fmt: skip
                    raise EvidenceError(f"{where}: dispositions.json says of {aid} what its receipt does not "
                                        f"({entry.get('disposition')!r} {entry.get('reasons')}, receipt "
                                        f"{body['disposition']!r} {list(body['reasons'])})")  # fmt: skip
            _check_accepted_files(program, window_id, receipts, disposed)
        if states[-1]["state"] == RECONCILED:
            revision = _check_reconciled(program, window_id, receipts, revision)
            decisions = [r.body["decision"] for r in receipts if r.kind == "policy_promotion"]
            promoted_by = window_id if decisions[-1] == "promote" else promoted_by
    if pointer["revision"] != revision:
        raise EvidenceError(f"pointer.json names revision {pointer['revision'][:12]}..., but the windows' receipts "
                            f"leave {revision[:12]}...")  # fmt: skip
    if "window" in pointer and pointer["window"] != promoted_by:
        said = promoted_by or "none did (it is revision 0)"
        raise EvidenceError(f"pointer.json says window {pointer['window']!r} promoted its revision, but the windows' "
                            f"receipts say {said!r}; it was edited")  # fmt: skip
    program.revision(pointer["checkpoint"], pointer["revision"])
    return {"windows": len(program.window_ids()), "receipts": receipts_total, "revision": revision}


def _base_revision(program: Program) -> str:
    """Revision 0's digest, once ``revisions/base`` verifies and is the revision ``window init`` made from the base
    program.json names (a program made before ``revision_0`` was recorded is held to its base alone)."""
    from lit_psion.core.checkpoint import verify_checkpoint

    checkpoint = verify_checkpoint(program.root / BASE_REVISION)
    values = record(program.settings_path, ("base",))
    made, base = values.get("revision_0"), values["base"]
    if (made is not None and made != checkpoint.manifest_sha256) or not isinstance(base, dict) or (
            checkpoint.manifest.parent != base.get("checkpoint_digest")):  # fmt: skip
        raise EvidenceError(f"{str(program.root / BASE_REVISION)!r} is not the revision 0 window init made (manifest "
                            f"{checkpoint.manifest_sha256[:12]}..., program.json records {str(made)[:12]}... from "
                            f"base {str(base.get('checkpoint_digest') if isinstance(base, dict) else base)[:12]}...); "
                            "restore it from a backup")  # fmt: skip
    return checkpoint.manifest_sha256


def _check_reconciled(program: Program, window_id: str, receipts: list, revision: str) -> str:
    """The revision a reconciled window leaves, after checking its promotion record and candidate."""
    promotions = [r.body for r in receipts if r.kind == "policy_promotion"]
    aggregations = [r.body for r in receipts if r.kind == "adapter_aggregation"]
    if not promotions or not aggregations:
        raise EvidenceError(f"{window_id} is reconciled but holds no promotion or no aggregation receipt")
    promotion, aggregation = promotions[-1], aggregations[-1]  # an interrupted reconcile's are followed by its rerun's
    recorded = record(program.window_dir(window_id) / PROMOTION)
    said = {"decision": promotion["decision"], "reasons": promotion["reasons"],
            "candidate_revision": aggregation["candidate_revision"], "weights": aggregation["weights"],
            "accepted_artifacts": aggregation["accepted_artifacts"], "window_id": window_id,
            "previous_revision": revision, "candidate_checkpoint": aggregation["candidate_checkpoint"],
            "next_revision": aggregation["candidate_revision"] if promotion["decision"] == "promote" else revision,
            "scores": {k: v for k, v in recorded.get("scores", {}).items() if k in promotion["scores"]}}  # fmt: skip
    if recorded.get("scores", {}).keys() - promotion["scores"].keys() - {"candidate_loss"} or said["scores"] != (
            promotion["scores"]) or any(_plain(recorded.get(k)) != _plain(v) for k, v in said.items()):  # fmt: skip
        raise EvidenceError(f"{window_id}: promotion.json does not say what its promotion and aggregation receipts "
                            "say")  # fmt: skip
    for digest in aggregation["accepted_artifacts"]:
        if digest not in _present_artifacts(program, window_id):
            raise EvidenceError(f"{window_id}: accepted artifact {digest[:12]}... is no longer among its "
                                "contributions (deleted or replaced after it was aggregated)")  # fmt: skip
    if aggregation["candidate_revision"] is not None:
        program.revision(aggregation["candidate_checkpoint"], aggregation["candidate_revision"])
        stacked = program.window_dir(window_id) / "aggregate" / "stacked_adapter.safetensors"
        if not stacked.is_file() or sha256_file(stacked) != aggregation["stacked_adapter_digest"]:
            raise EvidenceError(f"{window_id}: {str(stacked)!r} is not the stacked adapter its aggregation receipt "
                                "records")  # fmt: skip
    return aggregation["candidate_revision"] if promotion["decision"] == "promote" else revision


def _check_accepted_files(program: Program, window_id: str, receipts: list, disposed: dict[str, Any]) -> None:
    """Every accepted contribution's ``adapter.safetensors`` and ``contribution.json`` (whose token count set its
    aggregation weight) are the bytes the window's (last) seal receipt records.

    Raises:
        EvidenceError: one was edited, replaced, deleted or made a symlink after the seal (exit 5).
    """
    seals = [r.body for r in receipts if r.kind == "window_state" and r.body["state"] == SEALED]
    submissions = seals[-1]["detail"].get("submissions", {}) if seals else {}
    for aid in sorted(aid for aid, body in disposed.items() if body["disposition"] == ACCEPTED):
        sealed = submissions.get(aid) or {}
        for name, key in ((ADAPTER, "artifact"), (CONTRIBUTION, "metadata")):
            path = program.window_dir(window_id) / "contributions" / aid / name
            if path.is_symlink() or not path.is_file():
                what = "is a symlink" if path.is_symlink() else "is missing (deleted after the seal)"
                raise EvidenceError(f"{window_id}: {str(path)!r} of accepted contribution {aid} {what}; restore it "
                                    "from a backup")  # fmt: skip
            if sha256_file(path) != sealed.get(key):
                raise EvidenceError(f"{window_id}: {str(path)!r} of accepted contribution {aid} is not the file its "
                                    f"seal receipt records (sha256 {str(sealed.get(key))[:12]}...); it was edited "
                                    "after the seal")  # fmt: skip


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples are lists), to compare a record with a receipt body."""
    return json.loads(json.dumps(value)) if value is not None else None


def _present_artifacts(program: Program, window_id: str) -> set[str]:
    """The sha256 of every contribution's adapter file in the window now."""
    contributions = program.window_dir(window_id) / "contributions"
    found = set()
    for directory in contributions.iterdir() if contributions.is_dir() else ():
        adapter = directory / ADAPTER
        if not directory.name.startswith(".") and adapter.is_file() and not adapter.is_symlink():
            found.add(sha256_file(adapter))
    return found
