"""``window status`` and ``window verify``: what the program holds, and proof that its records agree.

``verify_program`` checks, for every window: its receipt chain from genesis to the head ``window.json``
records; that every state receipt names the plan's digest and the last one is the recorded state;
that ``dispositions.json`` and ``promotion.json`` say what the receipts say; that each window's input
revision is the revision the one before it left (the base's for the first); that every candidate
revision verifies against its aggregation receipt; and that the pointer names the last window's
outcome. Any difference is an EvidenceError (exit 5) or a CheckpointError (exit 4) naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lit_psion.core.chain import parse_receipt
from lit_psion.core.errors import EvidenceError
from lit_psion.core.layout import RECEIPTS_FILE
from lit_psion.core.windows import RECONCILED
from lit_psion.windows.program import BASE_REVISION, DISPOSITIONS, PROMOTION, Program, record, verify_window_chain


def program_status(root: Path) -> dict[str, Any]:
    program = Program(root)
    program.settings()
    windows = []
    for window_id in program.window_ids():
        entry: dict[str, Any] = {"window": window_id, "state": program.state(window_id)}
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
    return {"root": str(root), "revision": program.pointer(), "windows": windows}


def verify_program(root: Path) -> dict[str, Any]:
    """Check the program's records against each other and its receipts (see the module docstring)."""
    program = Program(root)
    program.require()
    program.settings()
    pointer = program.pointer()
    revision = _base_revision(program)
    receipts_total = 0
    for window_id in program.window_ids():
        verify_window_chain(program, window_id)
        plan = program.plan(window_id)
        lines = (program.window_dir(window_id) / RECEIPTS_FILE).read_text().splitlines()
        receipts = [parse_receipt(line) for line in lines if line.strip()]
        receipts_total += len(receipts)
        states = [r.body for r in receipts if r.kind == "window_state"]
        where = f"{window_id}"
        if any(body["plan_digest"] != plan.digest for body in states):
            raise EvidenceError(f"{where}: plan.json is not the plan its receipts name (it was edited after planning)")
        if not states or states[-1]["state"] != program.state(window_id):
            raise EvidenceError(f"{where}: window.json says {program.state(window_id)!r}, its receipts end at "
                                f"{states[-1]['state'] if states else 'nothing'!r}")  # fmt: skip
        if plan.input_revision != revision:
            raise EvidenceError(f"{where} was planned from revision {plan.input_revision[:12]}..., but the revision "
                                f"before it was {revision[:12]}...")  # fmt: skip
        disposed = {r.body["assignment_id"]: r.body for r in receipts
                    if r.kind == "adapter_contribution" and r.body["event"] == "disposed"}  # fmt: skip
        if disposed:
            recorded = record(program.window_dir(window_id) / DISPOSITIONS)["assignments"]
            for aid, body in disposed.items():
                entry = recorded.get(aid, {})
                if (entry.get("disposition"), entry.get("artifact_digest")) != (body["disposition"],
                                                                                  body["artifact_digest"]):  # fmt: skip
                    raise EvidenceError(f"{where}: dispositions.json says {aid} is {entry.get('disposition')!r}, its "
                                        f"receipt says {body['disposition']!r}")  # fmt: skip
        if states[-1]["state"] == RECONCILED:
            revision = _check_reconciled(program, window_id, receipts, revision)
    if pointer["revision"] != revision:
        raise EvidenceError(f"pointer.json names revision {pointer['revision'][:12]}..., but the windows' receipts "
                            f"leave {revision[:12]}...")  # fmt: skip
    program.revision(pointer["checkpoint"], pointer["revision"])
    return {"windows": len(program.window_ids()), "receipts": receipts_total, "revision": revision}


def _base_revision(program: Program) -> str:
    from lit_psion.core.checkpoint import verify_checkpoint

    return verify_checkpoint(program.root / BASE_REVISION).manifest_sha256


def _check_reconciled(program: Program, window_id: str, receipts: list, revision: str) -> str:
    """The revision a reconciled window leaves, after checking its promotion record and candidate."""
    promotions = [r.body for r in receipts if r.kind == "policy_promotion"]
    aggregations = [r.body for r in receipts if r.kind == "adapter_aggregation"]
    if not promotions or not aggregations:
        raise EvidenceError(f"{window_id} is reconciled but holds no promotion or no aggregation receipt")
    promotion, aggregation = promotions[-1], aggregations[-1]  # an interrupted reconcile's are followed by its rerun's
    recorded = record(program.window_dir(window_id) / PROMOTION)
    if recorded["decision"] != promotion["decision"] or recorded["candidate_revision"] != aggregation[
            "candidate_revision"]:  # fmt: skip
        raise EvidenceError(f"{window_id}: promotion.json does not say what its promotion receipt says")
    if aggregation["candidate_revision"] is not None:
        program.revision(aggregation["candidate_checkpoint"], aggregation["candidate_revision"])
    return aggregation["candidate_revision"] if promotion["decision"] == "promote" else revision
