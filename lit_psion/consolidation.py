"""One-file copies of sharded checkpoints (``ckpt consolidate``), and what holds such a copy to its run.

A sharded checkpoint (one file per rank, torch's DCP) is gathered in one process into
``<run>/consolidated/step-NNNNNN/``: a model to load, sample, adapt or export, not to resume. The copy's receipt goes to
``consolidated/receipts.jsonl``, a log no anchor of the run's holds: rewritten with a forged copy, it verifies. So a
copy in a run is trusted only as the gathering of the sharded checkpoint it names (``consolidated_from``), which the
run's receipts anchor: its weights and trainer state are gathered again from that checkpoint and compared, value for
value. A copy whose sharded checkpoint the run no longer holds is held to nothing, and refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load as safetensors_load

from lit_psion.checkpoint_io import (
    EXTRA_KEY,
    STATE,
    WEIGHTS,
    _WeightsOnlyBytes,
    first_failure,
    load_trainer_state,
    verified_reader,
    write_checkpoint,
)
from lit_psion.core.checkpoint import CONSOLIDATION_PREFIX, MANIFEST_FILE, VerifiedCheckpoint, verify_checkpoint
from lit_psion.core.errors import CheckpointError, ConfigError
from lit_psion.core.layout import RECEIPTS_FILE, RunLayout, step_name
from lit_psion.core.text import shell_words

RUN_FIELDS = ("run_id", "model_signature", "data_manifest_digest", "cursor", "membership", "receipts_head")
"""The sharded checkpoint's manifest fields its copy's manifest carries."""


def consolidate(verified: VerifiedCheckpoint, out: Path) -> tuple[Path, dict[str, Any]]:
    """Gather a verified sharded checkpoint into one single-file checkpoint ``out/step-NNNNNN/``.

    The weights become ``model.safetensors``; ``trainer_state.pt`` keeps the sharded checkpoint's
    trainer state (no optimizer state). Its manifest records ``consolidated_from`` (the source manifest's sha256); a
    receipt goes to ``out/receipts.jsonl``. One process, no process group; it holds the whole model in memory.

    Returns:
        The checkpoint directory written and the consolidation receipt's fields.
    """
    from lit_psion.core.receipt_log import ReceiptLog
    from lit_psion.core.receipts import ConsolidationReceipt

    if not verified.sharded:
        raise ConfigError(f"checkpoint {str(verified.path)!r} is not sharded; it already is one {WEIGHTS} "
                          "(nothing to consolidate: read the run directly)")  # fmt: skip
    path = out / step_name(verified.step)
    if path.exists() or path.is_symlink():  # this checkpoint's copy, consolidated before: kept; anything else: refused
        try:
            copy = _receipted_copy(path, verified, "it is left as it is")
        except CheckpointError as error:
            raise ConfigError(f"{str(path)!r} is already there and is not {verified.path.name}'s consolidated copy "
                              f"({error}); move it, or give another --out") from error  # fmt: skip
        return path, {"checkpoint": str(path), "weights_sha256": copy.weights_sha256, "already": True}
    weights, state = _gathered(verified)
    # The log is opened (and checked: another run's consolidations, a garbled log) before anything is written.
    log = ReceiptLog(out / RECEIPTS_FILE, run_id=f"{CONSOLIDATION_PREFIX}{verified.manifest.run_id}")
    write_checkpoint({**state, "state_dict": weights}, path)
    written = verify_checkpoint(path)
    body = ConsolidationReceipt(source=f"run:{verified.manifest.run_id}/{verified.path.name}",
                                source_manifest_digest=verified.manifest_sha256, step=verified.step,
                                checkpoint=path.name, manifest_digest=written.manifest_sha256,
                                weights_digest=written.weights_sha256 or "")  # fmt: skip
    log.append(body)
    log.close()
    return path, {"checkpoint": str(path), "weights_sha256": written.weights_sha256,
                  "tensors": len(weights), "values": sum(t.numel() for t in weights.values())}


def _gathered(verified: VerifiedCheckpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights of the sharded checkpoint ``verified`` gathered in this process, and the trainer state its copy
    holds (the checkpoint's, its run-level fields naming the gathering)."""
    # What torch's own dcp_to_torch_save runs (one process, the plan built from the metadata), over verified bytes.
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state = load_trainer_state(verified)
    gathered: dict[str, Any] = {}
    try:
        planner = type("_Gather", (_WeightsOnlyBytes, _EmptyStateDictLoadPlanner), {})(keys={"state_dict"})
        _load_state_dict(gathered, storage_reader=verified_reader(verified), planner=planner, no_dist=True)
    except (Exception, dcp.api.CheckpointException) as error:  # DCP's is a BaseException: named, or it escapes
        cause = first_failure(error)
        if isinstance(cause, CheckpointError):
            raise cause from error
        reason = str(cause).splitlines()[0] if str(cause) else ""
        raise CheckpointError(f"checkpoint {str(verified.path)!r}: its shards cannot be gathered "
                              f"({type(cause).__name__}: {reason})") from error
    weights = gathered.get("state_dict")
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"checkpoint {str(verified.path)!r} holds no model shards")
    extra = {**state.pop(EXTRA_KEY, {}), "writer": "consolidate", "consolidated_from": verified.manifest_sha256}
    extra.update({key: getattr(verified.manifest, key) for key in RUN_FIELDS})
    return weights, {**state, EXTRA_KEY: extra}


def consolidated_for(layout: RunLayout, verified: VerifiedCheckpoint) -> VerifiedCheckpoint:
    """The run's consolidated copy of the sharded checkpoint ``verified`` (``<run>/consolidated/step-NNNNNN``).

    Raises:
        CheckpointError: there is none, it does not verify, or it is not the gathering of ``verified``.
    """
    path = layout.consolidated / verified.path.name
    hint = f"run `python -m lit_psion ckpt consolidate {shell_words(layout.run_dir)}` first"
    if not (path / MANIFEST_FILE).is_file():
        raise CheckpointError(f"checkpoint {verified.path.name} of run {layout.run_id!r} is sharded (one file per "
                              f"rank); reading it as one model needs its consolidated copy: {hint}")  # fmt: skip
    return _receipted_copy(path, verified, hint)


def verify_with_its_run(path: Path) -> VerifiedCheckpoint:
    """:func:`~lit_psion.core.audit.verify_in_its_run`, and a copy in a run's ``consolidated/`` held to the sharded
    checkpoint it gathers (:func:`held_copy`)."""
    from lit_psion.core.audit import verify_in_its_run

    checkpoint = verify_in_its_run(path)
    layout = RunLayout.of(path.resolve().parent.parent)
    if layout.is_run() and path.resolve().parent == layout.consolidated.resolve():
        return held_copy(checkpoint, layout)
    return checkpoint


def held_copy(copy: VerifiedCheckpoint, layout: RunLayout) -> VerifiedCheckpoint:
    """``copy``, a checkpoint in run ``layout``'s ``consolidated/`` given by path, held to the sharded checkpoint of
    the run it gathers (itself held to the run: written by it, the one its durable receipt recorded).

    Raises:
        CheckpointError: the run no longer holds that checkpoint, it is not sharded, or the copy is not its gathering.
        EvidenceError: the run's records or chain do not verify.
    """
    from lit_psion.core.audit import verify_in_its_run

    source = layout.checkpoints / copy.path.name
    if not (source / MANIFEST_FILE).is_file():
        raise CheckpointError(f"{str(copy.path)!r} is a consolidated copy of {copy.path.name}, which run "
                              f"{layout.run_id!r} no longer holds: a copy is held to the sharded checkpoint it "
                              "gathers, so this one is held to nothing; use a checkpoint the run keeps")  # fmt: skip
    return _receipted_copy(copy.path, verify_in_its_run(source), f"move {str(copy.path)!r} aside, then consolidate "
                           f"again (python -m lit_psion ckpt consolidate {shell_words(layout.run_dir)})")  # fmt: skip


def _receipted_copy(path: Path, verified: VerifiedCheckpoint, hint: str) -> VerifiedCheckpoint:
    """The consolidated copy of ``verified`` at ``path``: it verifies, is the copy the receipts beside it
    (``path.parent/receipts.jsonl``) recorded, and is ``verified`` gathered (weights and trainer state, compared).

    Raises:
        CheckpointError: anything else is there (a user's file or directory, a damaged, replaced or forged copy, a
            copy of another checkpoint); ``hint`` says what to do.
    """
    if path.is_symlink() or not path.is_dir():
        what = "a symbolic link" if path.is_symlink() else "a file"
        raise CheckpointError(f"{str(path)!r} is {what}, not a consolidated checkpoint; {hint}")
    copy = verify_checkpoint(path)
    if copy.manifest.consolidated_from != verified.manifest_sha256:
        raise CheckpointError(f"{str(path)!r} gathers another checkpoint than {verified.path.name} (its "
                              f"consolidated_from differs); {hint}")  # fmt: skip
    from lit_psion.core.chain import log_lines, parse_receipt, verify_log

    receipts = path.parent / RECEIPTS_FILE
    checked = verify_log(receipts) if receipts.is_file() else None
    if checked is None or not checked.ok:
        raise CheckpointError(f"{str(path)!r} has no verifying consolidation receipts ({str(receipts)!r}); {hint}")
    receipted = [parse_receipt(line) for line in log_lines(receipts.read_text()) if line.strip()]
    wanted = {"manifest_digest": copy.manifest_sha256, "source_manifest_digest": verified.manifest_sha256}
    if not any(r.kind == "checkpoint_consolidate" and wanted.items() <= r.body.items() for r in receipted):
        raise CheckpointError(f"{str(path)!r} is not the copy its consolidation receipt recorded (its manifest was "
                              f"replaced after it was written); {hint}")  # fmt: skip
    _refuse_another_gathering(copy, verified, hint)
    return copy


def _refuse_another_gathering(copy: VerifiedCheckpoint, verified: VerifiedCheckpoint, hint: str) -> None:
    """The receipt log beside a copy is anchored nowhere: the copy must be what ``verified`` gathers to."""
    if not verified.sharded:
        raise CheckpointError(f"{str(copy.path)!r} names {verified.path.name} as the checkpoint it gathers, which is "
                              "not sharded: `ckpt consolidate` made no copy of it; use the run's own checkpoint")
    weights, state = _gathered(verified)
    try:
        held = safetensors_load(copy.contents[WEIGHTS]) if WEIGHTS in copy.contents else None
    except Exception:  # (verified bytes a forger wrote: any failure to parse them is theirs)
        held = None
    differs = WEIGHTS if held is None or not _same(held, weights) else None
    if differs is None and (STATE not in copy.contents or not _same(load_trainer_state(copy), state)):
        differs = STATE
    if differs is not None:
        raise CheckpointError(f"{str(copy.path)!r} is not what {verified.path.name} gathers to (its {differs} differs, "
                              "its manifest and receipt made to match): it was replaced after it was written; "
                              f"{hint}")  # fmt: skip


def _same(a: Any, b: Any) -> bool:
    """Whether two loaded states hold the same values (tensors: dtype, shape and every element, bitwise)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(_bits(a), _bits(b)))  # fmt: skip
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes, to compare bitwise (a NaN equals itself)."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)
