"""Where a checkpoint's records anchor it in its run's receipt log: the checks a checkpoint without a counted durable
receipt must pass to be the one a kill left (:func:`lit_psion.core.checkpoint.as_receipted` applies them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lit_psion.core.checkpoint import CheckpointReceipts, VerifiedCheckpoint


def at_the_run_head(checkpoint: VerifiedCheckpoint, receipts: CheckpointReceipts) -> bool:
    """Whether the checkpoint records run.json's own head and step: run.json and the manifest take both at the same
    moment (``on_save_checkpoint``), so a checkpoint whose durable receipt a kill left past run.json's head does."""
    return (receipts.run_head is not None and checkpoint.manifest.receipts_head == receipts.run_head
            and checkpoint.step == receipts.run_step)  # fmt: skip


def unreceipted_problem(checkpoint: VerifiedCheckpoint, receipts: CheckpointReceipts) -> str | None:
    """Why a checkpoint no counted receipt records cannot be the one a kill left before its receipt, or before
    run.json's next write (None if it can be). Only a fit that did not end can leave one: a run that paused,
    completed or failed wrote every checkpoint's durable receipt before its status (but one whose log could not take
    it); a Ctrl-C inside a commit is the exception: its resume falls back to the checkpoint before and replays the
    steps since. And it records run.json's own head and step, which a fit that did not end wrote with the
    checkpoint's manifest (anchored anywhere else, it is vouched for by its own manifest alone)."""
    if receipts.anchored is None or checkpoint.manifest.receipts_head is None:
        return None  # run.json records no head the log holds (written before heads), or the fit kept no receipts
    ended = receipts.run_status in ("paused", "completed", "failed")  # their run.json's head and step are free
    if ended and not (receipts.run_status == "failed" and receipts.run_failure == "evidence_flush_failed"):
        return f"the run {receipts.run_status} after writing every checkpoint's receipt"
    if not at_the_run_head(checkpoint, receipts):
        return (f"it does not record run.json's head and step ({checkpoint.manifest.receipts_head[:16]}... at step "
                f"{checkpoint.step}; run.json: {str(receipts.run_head)[:16]}... at step {receipts.run_step})")
    if (given := receipts.rewritten.get(checkpoint.step)) is not None and given != (checkpoint.manifest_sha256,
                                                                                     checkpoint.weights_sha256):
        return "a durable receipt after run.json's head records other digests for its step"
    return None


NOT_IN_CHAIN = "the receipt head its manifest records is not in the run's receipts"
SUPERSEDED = "a later attempt resumed from an earlier checkpoint after the head its manifest records"
"""An attempt killed after writing a checkpoint but before its durable receipt, then resumed from the checkpoint
before (the pointer's): the checkpoint is the killed attempt's, vouched for by nothing, and used by nothing (the
resumed attempt writes its step again)."""


def unanchored(checkpoint: VerifiedCheckpoint, chain: Path) -> str | None:
    """Why a checkpoint without its receipt cannot be one the run wrote just before a kill (None if it can be).

    The fit writes step k's checkpoint after step k's ``trainer_step`` receipt and records the chain's head in its
    manifest; whatever the chain holds after that head trained on from step k. So the head is in the chain, no
    step receipted up to it ends past k, no step receipted after it starts before k, and the last step receipted up
    to it is k, or (receipting every n steps) less than the last interval between two receipted steps before k.
    A head anchored where the chain ended, under a later step, is a checkpoint no fit wrote (a paused run's log
    ends there, so nothing after the head gives it away).
    """
    head, step = checkpoint.manifest.receipts_head, checkpoint.step
    if head is None or not chain.is_file():
        return None  # written before manifests anchored the chain, or by a fit without receipts
    anchored, ended_at, interval, superseded = False, None, None, None
    with chain.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                receipt = json.loads(line)
                body = receipt["body"] if receipt["kind"] == "trainer_step" else None
                step_in, step_out = (int(body["step_in"]), int(body["step_out"])) if body else (None, None)
                digest = receipt["digest"]
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                continue  # the chain's own verdict names a bad line
            if not anchored and step_out is not None:
                if ended_at is not None and step_out > ended_at:  # (not a rollback's, nor accumulation's repeat)
                    interval = step_out - ended_at
                ended_at = step_out
            # Under gradient accumulation the micro-batches after the step's last one receipt the same step again.
            again = ended_at == step and (step_in, step_out) == (step - 1, step)
            if anchored and superseded is None and receipt.get("kind") != "chain_repair":  # (a torn tail mended)
                # the receipt right after the head: a later attempt's resume from before the checkpoint?
                superseded = receipt.get("kind") == "training_run" and _resumed_before(receipt.get("body"), step)
            if superseded:
                break  # a later attempt: what it receipts is its own (the checks below still hold the head)
            if anchored and step_in is not None and step_in < step and not again:
                return f"the run's receipts go on from step {step_in} after the head its manifest records"
            anchored = anchored or digest == head
    if not anchored:
        return NOT_IN_CHAIN
    if ended_at is not None and ended_at > step:
        return f"the run's receipts had reached step {ended_at} at the head its manifest records, not {step}"
    if ended_at is not None and interval is not None and step - ended_at >= interval:
        return (f"the run's receipts, one every {interval} step(s), had reached only step {ended_at} at the head its "
                f"manifest records, so step {step} would have been receipted before its checkpoint")  # fmt: skip
    return SUPERSEDED if superseded else None


def _resumed_before(body: object, step: int) -> bool:
    """Whether a ``training_run`` receipt's body is a resume from a checkpoint before ``step``."""
    from lit_psion.core.skip_list import resumed_step

    resumed = resumed_step(body) if isinstance(body, dict) else None
    return resumed is not None and resumed < step
