"""What a run's durable ``checkpoint`` receipts vouch for, up to the head its run.json records."""

from __future__ import annotations

import json
from typing import Any

from lit_psion.core.chain import log_lines, torn_tail, verify_log
from lit_psion.core.checkpoint import (
    CheckpointReceipts,
    VerifiedCheckpoint,
    as_receipted,
    belonging,
    resolve_checkpoint,
    verify_checkpoint,
)
from lit_psion.core.errors import CheckpointError, EvidenceError
from lit_psion.core.files import read_json
from lit_psion.core.layout import RunLayout, step_of
from lit_psion.core.skip_list import resumed_step


def receipted_checkpoints(layout: RunLayout) -> CheckpointReceipts:
    """What the run's ``durable`` checkpoint receipts recorded (the latest per step), and whether it is sealed.

    Only the receipts up to the head run.json records count (all of them when it records none, or one the log does
    not hold: the chain's own check names that): anyone who can write the log can append a validly chained receipt,
    and one appended after that head is vouched for by nothing outside the log. The fit writes run.json's head again
    once each checkpoint's durable receipt is appended, so only a kill between the two leaves a durable receipt past
    it, and that checkpoint is then held to where its manifest anchors it, as one whose receipt a kill prevented."""
    recorded: dict[int, tuple[str | None, str | None]] = {}
    sealed = False
    if not layout.receipts.is_file():  # a run that wrote receipts (run.json records a head) and lost its log
        head = _recorded_run(layout).get("receipts_head")  # can vouch for nothing
        lost = (f"{layout.receipts.name} is missing (run.json records head {head}); restore it from a backup, or "
                "start a new run from the checkpoint with --ckpt_path <checkpoint directory>") if isinstance(
                    head, str) else None  # fmt: skip
        return CheckpointReceipts(broken=lost)
    torn = len(torn_tail(layout.receipts))
    checked = verify_log(layout.receipts, run_id=layout.run_id, upto=layout.receipts.stat().st_size - torn if torn
                         else None)  # fmt: skip
    lines = log_lines(layout.receipts.read_text(encoding="utf-8", errors="replace"))
    vouched = lines if checked.ok else lines[: (checked.line or 1) - 1]  # what the chain vouches for
    run = _recorded_run(layout)
    head = run.get("receipts_head")
    anchored: set[str] | None = set() if isinstance(head, str) and head in checked.digests else None
    past_head, refit, rewritten = False, set[int](), dict[int, tuple[str | None, str | None]]()
    for line in vouched:
        try:
            receipt = json.loads(line)
            body = receipt["body"]
            sealed = receipt["kind"] == "chain_seal" or (sealed and receipt["kind"] == "chain_repair")
            durable = receipt["kind"] == "checkpoint" and body["durability"] == "durable"
            if durable and past_head:  # the first after the head: what a fit killed before run.json's next write left
                rewritten.setdefault(int(body["step"]), (body["manifest_digest"], body["object_digest"]))
            elif durable:
                recorded[int(body["step"])] = (body["manifest_digest"], body["object_digest"])
                refit.discard(int(body["step"]))
            elif receipt["kind"] == "training_run" and not past_head and (resumed := resumed_step(body)) is not None:
                refit = {step for step in recorded if step > resumed}  # steps this attempt writes again
            if anchored is not None and not past_head:
                anchored.add(receipt["digest"])
                past_head = receipt["digest"] == head  # what follows run.json's head is vouched for by the log alone
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            continue  # the chain's own verdict names a bad line
    if anchored is None:  # nothing to tell apart: every durable receipt counts, the latest per step
        recorded.update(rewritten)
        rewritten = {}
    broken = None if checked.ok else f"{layout.receipts.name} {checked.describe()}"
    step, status = run.get("global_step"), run.get("status")
    return CheckpointReceipts(recorded=recorded, sealed=sealed, chain=layout.receipts, broken=broken,
                              anchored=frozenset(anchored) if anchored is not None else None,
                              rewritten={s: d for s, d in rewritten.items() if s in refit or s not in recorded},
                              refit=frozenset(refit) if anchored is not None else frozenset(),
                              run_head=head if anchored is not None else None,
                              run_step=step if type(step) is int else None,
                              run_status=status if isinstance(status, str) else None,
                              run_failure=failure if isinstance(failure := run.get("failure_class"), str) else None)


def _recorded_run(layout: RunLayout) -> dict[str, Any]:
    """run.json's record as written (empty for a directory that is not a run, or a run.json that cannot be read)."""
    try:
        record = read_json(layout.run_file) if layout.is_run() else {}
    except (OSError, ValueError, AttributeError, RecursionError):
        return {}  # run.json's own verdict
    return record if isinstance(record, dict) else {}


def restore_target(layout: RunLayout, every: int | None, receipted: CheckpointReceipts,
                   quiet: bool = False) -> VerifiedCheckpoint | None:  # fmt: skip
    """The checkpoint a transactional restore loads: the newest that verifies at a step of the checkpoint schedule
    (a multiple of ``every``), which an uninterrupted run has too. A pause's checkpoint (SIGTERM) or an earlier
    fit's last one (its ``max_steps``) is passed over: restoring it would train another run than the uninterrupted
    one, which a resume promises to match bitwise. None: no scheduled checkpoint yet (``every`` None: the newest).

    Raises:
        CheckpointError: the checkpoints the receipts record are damaged (from :func:`resolve_checkpoint`).
    """
    newest = resolve_checkpoint(layout, quiet=quiet, receipted=receipted)
    if not every or newest.step % every == 0:
        return newest
    damaged = None
    for path in reversed(layout.checkpoint_dirs()):
        step = step_of(path.name)
        if step is not None and step < newest.step and step % every == 0:
            try:
                return as_receipted(belonging(verify_checkpoint(path), layout), receipted)
            except (CheckpointError, EvidenceError) as error:
                damaged = damaged or f"{path.name}: {error}"  # an older scheduled one, then
    if damaged is not None:
        raise CheckpointError(f"no scheduled checkpoint of run {layout.run_id!r} verifies ({damaged})")
    return None
