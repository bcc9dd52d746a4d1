"""The validator's side of a window: seal the submissions, then give every assignment a disposition.

``seal`` (active -> sealed) records each submission's bytes as they are at the seal (an
``adapter_contribution`` receipt, event ``submitted``) and freezes the set. ``score`` (sealed ->
scored) checks each sealed submission against the plan and the sealed digests (reason codes in
:data:`lit_psion.core.windows.REASONS`), measures the survivors' weight deltas (norm against the
window's median, held-out loss of the input revision plus each delta alone, cosine against each earlier
contribution of the window and each accepted contribution of an earlier window), writes
``dispositions.json`` and one ``disposed`` receipt per assignment. Norms and inner products are
computed on dW = (alpha / r) B A, never on the factors, which are not unique (BA = (BR)(R^-1 A)).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load

from lit_psion.core import atomic_write_json, sha256_bytes
from lit_psion.core.chain import log_lines, parse_receipt
from lit_psion.core.errors import EvidenceError
from lit_psion.core.layout import RECEIPTS_FILE
from lit_psion.core.receipts import AdapterContributionReceipt
from lit_psion.core.windows import (
    ACCEPTED,
    SCORED,
    SEALED,
    Assignment,
    WindowPlan,
    disposition_for,
    norm_outliers,
)
from lit_psion.windows.contribute import ADAPTER, CONTRIBUTION
from lit_psion.windows.data import held_out_loss
from lit_psion.windows.program import DISPOSITIONS, Program, plan_data, verify_window_chain

FACTOR_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The dtypes a contribution's factors may have (what adapter training writes); any other, float8 included, and a
0-dim tensor are ``malformed``."""
REQUIRED = ("window_id", "assignment_id", "contributor", "input_revision", "slice_index", "slice_digest", "targets",
            "rank", "alpha", "summary", "adapter_sha256")  # fmt: skip


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() and not path.is_symlink() else None


def submission(program: Program, window_id: str, assignment_id: str) -> tuple[bytes | None, bytes | None]:
    """The bytes of a submission's ``adapter.safetensors`` and ``contribution.json`` (None where absent)."""
    directory = program.window_dir(window_id) / "contributions" / assignment_id
    if directory.is_symlink() or not directory.is_dir():
        return None, None
    return _read(directory / ADAPTER), _read(directory / CONTRIBUTION)


def seal(root: Path, window_id: str) -> dict[str, Any]:
    """Freeze the window's submissions (active -> sealed); a receipt per submission binds its bytes."""
    program = Program(root)
    plan = program.plan(window_id)
    program.state(window_id)  # a window with no state file is not one to seal
    submitted, receipts = {}, []
    for assignment in plan.assignments:
        directory = program.window_dir(window_id) / "contributions" / assignment.assignment_id
        if not directory.exists() and not directory.is_symlink():
            submitted[assignment.assignment_id] = None
            continue
        data, meta = submission(program, window_id, assignment.assignment_id)
        digests = {"artifact": sha256_bytes(data) if data is not None else None,
                   "metadata": sha256_bytes(meta) if meta is not None else None}  # fmt: skip
        submitted[assignment.assignment_id] = digests
        receipts.append(AdapterContributionReceipt(
            window_id=window_id, assignment_id=assignment.assignment_id, contributor=assignment.contributor,
            event="submitted", input_revision=plan.input_revision, slice_index=assignment.slice.index,
            slice_digest=assignment.slice.digest, artifact_digest=digests["artifact"],
            metadata_digest=digests["metadata"], summary=_claimed_summary(meta)))  # fmt: skip
    program.transition(window_id, SEALED, {"submissions": submitted}, receipts)
    return submitted


SUMMARY_FIELDS = ("steps", "tokens", "first_loss", "last_loss", "mean_loss", "seconds")
MAX_METADATA_BYTES = 1 << 20


def parse_metadata(meta: bytes | None) -> dict[str, Any] | None:
    """A submission's ``contribution.json`` as a dict, or None when it is not one a validator can read (absent,
    over 1 MiB, not JSON, nested past the parser's limit, not an object)."""
    if meta is None or len(meta) > MAX_METADATA_BYTES:
        return None
    try:
        parsed = json.loads(meta)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _claimed_summary(meta: bytes | None) -> dict[str, Any]:
    """The execution summary as claimed, kept to its known fields with finite numbers (what a receipt can hold:
    canonical JSON has no NaN, and a claim is evidence, not something to crash on)."""
    parsed = parse_metadata(meta)
    summary = parsed.get("summary") if parsed is not None else None
    if not isinstance(summary, dict):
        return {}
    kept = {}
    for field in SUMMARY_FIELDS:
        value = summary.get(field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        try:
            if math.isfinite(float(value)):
                kept[field] = value
        except OverflowError:
            continue
    return kept


def sealed_submissions(program: Program, window_id: str) -> dict[str, dict[str, str | None] | None]:
    """The submissions the window's verified receipt chain froze at its seal.

    Raises:
        EvidenceError: the chain does not verify or holds no seal (exit 5).
    """
    path = program.window_dir(window_id) / RECEIPTS_FILE
    verify_window_chain(program, window_id)
    for line in reversed(log_lines(path.read_text(encoding="utf-8"))):
        receipt = parse_receipt(line)
        if receipt.kind == "window_state" and receipt.body["state"] == SEALED:
            return receipt.body["detail"]["submissions"]
    raise EvidenceError(f"{str(path)!r} records no seal of {window_id}; seal it first")


def disposals_before(program: Program, before: str) -> list[tuple[str, dict[str, Any]]]:
    """(window id, ``disposed`` receipt body) of every assignment scored in a window planned before ``before``
    (read once per ``score``: its duplicate and same-delta checks both take them).

    Read from each window's verified receipts, never its ``dispositions.json``: an edited record could otherwise
    make a later contribution a "duplicate", or hide an earlier one a later contribution copies.

    Raises:
        EvidenceError: an earlier window's receipt chain does not verify (exit 5).
    """
    found = []
    for window_id in (window_id for window_id in program.window_ids() if window_id < before):
        verify_window_chain(program, window_id)
        receipts = (parse_receipt(line) for line in log_lines(
            (program.window_dir(window_id) / RECEIPTS_FILE).read_text(encoding="utf-8")))  # fmt: skip
        found += [(window_id, r.body) for r in receipts if r.kind == "adapter_contribution"
                  and r.body["event"] == "disposed"]  # fmt: skip
    return found


def seen_artifacts(program: Program, earlier: list[tuple[str, dict[str, Any]]]) -> set[str]:
    """The digests of every artifact scored in an earlier window of the program, file bytes and tensors alike (a
    receipt written before the content digest was recorded in its evidence has it recomputed from the contribution's
    file, when that is still the sealed bytes)."""
    seen = set()
    for window_id, body in earlier:
        if body["artifact_digest"]:
            content = (body.get("evidence") or {}).get("content_digest") or _recomputed_content(
                program, window_id, body["assignment_id"], body["artifact_digest"])  # fmt: skip
            seen |= {d for d in (body["artifact_digest"], content) if d}
    return seen


def _recomputed_content(program: Program, window_id: str, assignment_id: str, artifact: str) -> str | None:
    """The content digest of a contribution's adapter file, when its bytes are still ``artifact`` and load."""
    data, _ = submission(program, window_id, assignment_id)
    if data is None or sha256_bytes(data) != artifact:
        return None
    try:
        tensors = load(data)
    except Exception:  # safetensors raises its own error type for a malformed file
        return None
    if any(t.dtype not in FACTOR_DTYPES or t.dim() < 1 for t in tensors.values()):
        return None
    return content_digest(tensors)


def expected_shapes(decoder_config: dict[str, Any], lora: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every LoRA tensor the plan's targets, rank and alpha give on the input revision's model."""
    from lit_psion.nn.decoder import Decoder, DecoderConfig
    from lit_psion.nn.lora import inject_lora

    with torch.device("meta"):
        model = Decoder(DecoderConfig(**decoder_config))
        inject_lora(model, lora["targets"], lora["rank"], lora["alpha"], check_rank=False)
    return {f"model.{name}": tuple(p.shape) for name, p in model.named_parameters() if ".lora_" in name}


def check_submission(plan: WindowPlan, assignment: Assignment, sealed: dict[str, str | None], data: bytes | None,
                     meta_bytes: bytes | None, shapes: dict[str, tuple[int, ...]],
                     seen: set[str]) -> tuple[list[str], dict[str, torch.Tensor] | None, dict[str, Any]]:  # fmt: skip
    """The rejection reasons of one sealed submission (empty when it may be measured), its tensors and metadata."""
    if data is None or meta_bytes is None:
        return ["malformed"], None, {}
    if sha256_bytes(data) != sealed["artifact"] or sha256_bytes(meta_bytes) != sealed["metadata"]:
        return ["digest_mismatch"], None, {}
    meta = parse_metadata(meta_bytes)
    if meta is None or any(field not in meta for field in REQUIRED):
        return ["malformed"], None, {}
    if meta["adapter_sha256"] != sha256_bytes(data):
        return ["digest_mismatch"], None, meta
    reasons = []
    if meta["contributor"] != assignment.contributor or meta["contributor"] not in plan.contributors:
        reasons.append("wrong_contributor")
    if meta["input_revision"] != plan.input_revision:
        reasons.append("stale_revision")
    if (meta["window_id"], meta["assignment_id"], meta["slice_index"], meta["slice_digest"]) != (
            plan.window_id, assignment.assignment_id, assignment.slice.index, assignment.slice.digest):  # fmt: skip
        reasons.append("wrong_slice")
    try:
        tensors = load(data)
    except Exception:  # safetensors raises its own error type for a malformed file
        return [*reasons, "malformed"], None, meta
    shape_claims = (meta["targets"], meta["rank"], meta["alpha"])
    actual = {name: tuple(t.shape) for name, t in tensors.items()}
    if shape_claims != (plan.lora["targets"], plan.lora["rank"], plan.lora["alpha"]) or actual != shapes:
        reasons.append("wrong_shape")
    if any(t.dtype not in FACTOR_DTYPES or t.dim() < 1 for t in tensors.values()):
        # integer, bool, complex or float8 factors, or a 0-dim tensor: no adapter training writes them, and neither
        # the digests nor the arithmetic below take them (float8 has no isfinite, a scalar no byte view)
        reasons.append("malformed")
        if meta["adapter_sha256"] in seen:
            reasons.append("duplicate_artifact")
        return reasons, None, meta
    summary = meta["summary"] if isinstance(meta["summary"], dict) else {}
    claimed = [k for k in SUMMARY_FIELDS if isinstance(summary.get(k), int | float)
               and not isinstance(summary[k], bool)]  # fmt: skip
    if any(not torch.isfinite(t).all() for t in tensors.values()) or len(_claimed_summary(meta_bytes)) != len(
            claimed):  # fmt: skip
        reasons.append("non_finite")
    budget = plan.budget["steps"] * plan.budget["batch_size"] * plan.data.get("block_size", 128)
    tokens = summary.get("tokens")
    if (isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 < tokens <= budget) and "malformed" not in \
            reasons:  # fmt: skip
        reasons.append("malformed")
    if meta["adapter_sha256"] in seen:
        reasons.append("duplicate_artifact")
    return reasons, tensors, meta


def content_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors themselves (names, dtypes, shapes, values), whatever file bytes carried them."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def layer_factors(tensors: dict[str, torch.Tensor], rank: int, alpha: float) -> dict[str, tuple[torch.Tensor, ...]]:
    """Layer path -> (B, A, scaling) of an adapter's tensors."""
    layers = sorted({name.rsplit(".", 1)[0] for name in tensors})
    return {layer: (tensors[f"{layer}.lora_b"].double(), tensors[f"{layer}.lora_a"].double(), alpha / rank)
            for layer in layers}  # fmt: skip


def delta_inner(first: dict[str, tuple[torch.Tensor, ...]], second: dict[str, tuple[torch.Tensor, ...]]) -> float:
    """<dW1, dW2> summed over layers, as tr((B1^T B2)(A2 A1^T)) scaled: never forms dW."""
    total = 0.0
    for layer, (b1, a1, s1) in first.items():
        b2, a2, s2 = second[layer]
        total += s1 * s2 * float(torch.trace((b1.T @ b2) @ (a2 @ a1.T)))
    return total


def score(root: Path, window_id: str) -> dict[str, Any]:
    """Give every assignment a disposition (sealed -> scored); ``dispositions.json`` and a receipt each."""
    from lit_psion.checkpoint_io import load_verified

    program = Program(root)
    plan = program.plan(window_id)
    sealed = sealed_submissions(program, window_id)
    revision = program.revision(plan.input_checkpoint, plan.input_revision)
    state = load_verified(revision)
    shapes = expected_shapes(state["decoder_config"], plan.lora)
    earlier = disposals_before(program, window_id)
    seen = seen_artifacts(program, earlier)
    entries: dict[str, dict[str, Any]] = {}
    measured: dict[str, dict[str, torch.Tensor]] = {}
    for assignment in plan.assignments:
        aid = assignment.assignment_id
        entry = {"contributor": assignment.contributor, "artifact_digest": None, "metadata_digest": None,
                 "summary": {}, "evidence": {}}  # fmt: skip
        entries[aid] = entry
        if sealed.get(aid) is None:
            arrived = (program.window_dir(window_id) / "contributions" / aid).exists()
            entry["reasons"] = ["arrived_after_seal" if arrived else "missing_at_seal"]
            continue
        data, meta_bytes = submission(program, window_id, aid)
        entry["artifact_digest"], entry["metadata_digest"] = sealed[aid]["artifact"], sealed[aid]["metadata"]
        reasons, tensors, _ = check_submission(plan, assignment, sealed[aid], data, meta_bytes, shapes, seen)
        if tensors is not None:
            entry["content_digest"] = content_digest(tensors)
            entry["evidence"]["content_digest"] = entry["content_digest"]  # receipted: later windows read it there
            if entry["content_digest"] in seen and "duplicate_artifact" not in reasons:
                reasons.append("duplicate_artifact")  # the same tensors under other file bytes
        entry["summary"] = _claimed_summary(meta_bytes)
        entry["reasons"] = reasons
        if not reasons and tensors is not None:
            measured[aid] = tensors
        seen |= {d for d in (sealed[aid]["artifact"], entry.get("content_digest")) if d}  # later copies: duplicates
    _measure(plan, state, measured, entries, program, earlier)
    for entry in entries.values():
        entry["disposition"] = disposition_for(entry["reasons"])
        entry["eligible"] = entry["disposition"] == ACCEPTED
    record = {"window_id": window_id, "plan_digest": plan.digest, "assignments": entries}
    receipts = [AdapterContributionReceipt(
        window_id=window_id, assignment_id=aid, contributor=e["contributor"], event="disposed",
        input_revision=plan.input_revision, slice_index=plan.assignment(aid).slice.index,
        slice_digest=plan.assignment(aid).slice.digest, artifact_digest=e["artifact_digest"],
        metadata_digest=e["metadata_digest"], summary=e["summary"], disposition=e["disposition"],
        reasons=tuple(e["reasons"]), evidence=e["evidence"], aggregation_eligible=e["eligible"],
    ) for aid, e in entries.items()]  # fmt: skip
    counts: dict[str, int] = {}
    for entry in entries.values():
        counts[entry["disposition"]] = counts.get(entry["disposition"], 0) + 1
    atomic_write_json(program.window_dir(window_id) / DISPOSITIONS, record)
    program.transition(window_id, SCORED, {"dispositions": counts}, receipts)
    return record


def _measure(plan: WindowPlan, state: dict[str, Any], measured: dict[str, dict[str, torch.Tensor]],
             entries: dict[str, dict[str, Any]], program: Program,
             earlier: list[tuple[str, dict[str, Any]]]) -> None:  # fmt: skip
    """Quarantine the measured contributions whose delta norm is an outlier or whose delta alone regresses held out."""
    from lit_psion.nn.decoder import Decoder, DecoderConfig
    from lit_psion.nn.lora import inject_lora

    if not measured:
        return
    policy = plan.validator
    rank, alpha = plan.lora["rank"], plan.lora["alpha"]
    factors = {aid: layer_factors(t, rank, alpha) for aid, t in measured.items()}
    norms = {aid: math.sqrt(max(delta_inner(f, f), 0.0)) for aid, f in factors.items()}
    finite = {aid: norm for aid, norm in norms.items() if math.isfinite(norm)}
    median = statistics.median(finite.values()) if finite else 0.0
    outliers = norm_outliers(finite, policy.norm_factor) | (norms.keys() - finite.keys())
    repeats = same_delta_as_earlier(program, earlier, factors, norms)  # "w-NNNN/aNN"
    repeats |= {later: earlier for later, earlier in _same_delta(factors, norms) if later not in repeats}  # "aNN"
    for later, earlier in repeats.items():
        entries[later]["reasons"].append("duplicate_artifact")  # the same update under other bytes (or factors)
        entries[later]["evidence"]["same_delta_as"] = earlier
    samples = plan_data(program, plan).samples("val")
    start, stop = plan.held_out["validator"]
    if policy.held_out_samples is not None:
        stop = min(stop, start + policy.held_out_samples)
    model = Decoder(DecoderConfig(**state["decoder_config"]))
    model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()})
    inject_lora(model, plan.lora["targets"], rank, alpha, check_rank=False)
    base_loss = held_out_loss(model, samples, start, stop)  # B = 0: the input revision itself
    for aid, tensors in measured.items():
        model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items()}, strict=False)
        loss = held_out_loss(model, samples, start, stop)
        entry = entries[aid]
        evidence = {"delta_norm": norms[aid], "median_norm": median, "held_out_loss": loss, "input_loss": base_loss}
        entry["evidence"] = {**entry["evidence"], **{k: v for k, v in evidence.items() if math.isfinite(v)}}
        if aid in outliers:
            entry["reasons"].append("delta_norm_outlier")
        if not math.isfinite(loss) or loss - base_loss > policy.max_regression:
            entry["reasons"].append("held_out_regression")


SAME_DELTA_COSINE = 0.9999
"""Two contributions whose dW have at least this cosine are one update submitted twice."""


def _same_delta(factors: dict[str, dict[str, tuple[torch.Tensor, ...]]],
                norms: dict[str, float]) -> list[tuple[str, str]]:  # fmt: skip
    """(later, earlier) pairs, in plan order, of contributions with the same weight delta (cosine on dW)."""
    pairs, kept = [], []
    for aid in factors:
        if not math.isfinite(norms[aid]) or norms[aid] == 0:
            continue
        for earlier in kept:
            cosine = delta_inner(factors[aid], factors[earlier]) / (norms[aid] * norms[earlier])
            if cosine >= SAME_DELTA_COSINE:
                pairs.append((aid, earlier))
                break
        else:
            kept.append(aid)
    return pairs


def _comparable(first: dict[str, tuple[torch.Tensor, ...]], second: dict[str, tuple[torch.Tensor, ...]]) -> bool:
    """Whether two adapters' dW live in the same space: the same layers, each dW of the same shape."""
    return first.keys() == second.keys() and all(
        (b.shape[0], a.shape[1]) == (second[layer][0].shape[0], second[layer][1].shape[1])
        for layer, (b, a, _) in first.items())  # fmt: skip


def same_delta_as_earlier(program: Program, earlier: list[tuple[str, dict[str, Any]]],
                          factors: dict[str, dict[str, tuple[torch.Tensor, ...]]],
                          norms: dict[str, float]) -> dict[str, str]:  # fmt: skip
    """Measured contribution -> the accepted contribution among ``earlier`` (:func:`disposals_before`: ``w-NNNN/aNN``)
    whose dW it repeats (cosine >= :data:`SAME_DELTA_COSINE`): the within-window test, across windows.

    Each earlier accepted adapter is read once, held to the artifact digest its window's receipts record, compared
    with every measured contribution, and dropped before the next is read.

    Raises:
        EvidenceError: an earlier accepted adapter is missing or is not the one its window accepted (exit 5).
    """
    pending = {aid for aid in factors if math.isfinite(norms[aid]) and norms[aid] > 0}
    found: dict[str, str] = {}
    for earlier_window, body in earlier if pending else ():
        if not pending:
            break
        if body["disposition"] != ACCEPTED:
            continue
        aid, lora = body["assignment_id"], program.plan(earlier_window).lora
        adapter = program.window_dir(earlier_window) / "contributions" / aid / ADAPTER
        data = _read(adapter)
        if data is None or sha256_bytes(data) != body["artifact_digest"]:
            raise EvidenceError(f"{str(adapter)!r} is not the adapter {earlier_window} accepted from {aid} "
                                f"({'missing' if data is None else 'other bytes'}); new contributions are "
                                "compared with it: restore it from a backup")  # fmt: skip
        earlier = layer_factors(load(data), lora["rank"], lora["alpha"])
        norm = math.sqrt(max(delta_inner(earlier, earlier), 0.0))
        if not math.isfinite(norm) or norm == 0:
            continue
        for current in sorted(pending):
            if _comparable(factors[current], earlier) and delta_inner(factors[current], earlier) / (
                    norms[current] * norm) >= SAME_DELTA_COSINE:  # fmt: skip
                found[current] = f"{earlier_window}/{aid}"
                pending.discard(current)
    return found
