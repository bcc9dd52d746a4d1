"""Exact aggregation of accepted adapters, the promotion gate, and reconciling a scored window.

Aggregation is in weight space: dW* = sum_k p_k (alpha_k / r_k) B_k A_k, p_k = tokens_k / sum tokens.
Averaging A and B separately (FedAvg on the factors) is not this: the product of averages is not
the average of products. The aggregate is kept twice: as a merged revision (the input weights plus
dW*, a checkpoint directory) and as a stacked adapter of rank sum r_k whose B_k are pre-scaled by
p_k (alpha_k / r_k) (with alpha = rank, so its own scaling is 1): exact, and loadable as LoRA.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from lit_psion.checkpoint_io import safetensors_bytes
from lit_psion.core import atomic_write_bytes, atomic_write_json, sha256_bytes
from lit_psion.core.checkpoint import verify_checkpoint
from lit_psion.core.errors import CheckpointError
from lit_psion.core.receipts import AdapterAggregationReceipt, PolicyPromotionReceipt
from lit_psion.core.windows import ACCEPTED, RECONCILED, WindowPlan
from lit_psion.windows.data import held_out_loss
from lit_psion.windows.program import DISPOSITIONS, PROMOTION, Program, own_directory, plan_data, record
from lit_psion.windows.validate import FACTOR_DTYPES, sealed_submissions, submission

RULE = "exact_delta_tokens_v1"
CANDIDATE = "aggregate/candidate"


@dataclasses.dataclass(frozen=True, slots=True)
class Adapter:
    """One adapter's LoRA tensors (``<layer>.lora_a`` / ``<layer>.lora_b``), its shape and its weight p_k."""

    tensors: dict[str, torch.Tensor]
    rank: int
    alpha: float
    weight: float


def layers_of(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted({name.rsplit(".", 1)[0] for name in tensors if name.endswith((".lora_a", ".lora_b"))})


def exact_delta(adapters: list[Adapter]) -> dict[str, torch.Tensor]:
    """Layer -> sum_k p_k (alpha_k / r_k) B_k A_k, in float64 then cast to the adapters' dtype."""
    deltas: dict[str, torch.Tensor] = {}
    for adapter in adapters:
        scale = adapter.weight * adapter.alpha / adapter.rank
        for layer in layers_of(adapter.tensors):
            b, a = adapter.tensors[f"{layer}.lora_b"].double(), adapter.tensors[f"{layer}.lora_a"].double()
            deltas[layer] = deltas.get(layer, 0) + scale * (b @ a)
    return deltas


def stacked(adapters: list[Adapter]) -> dict[str, torch.Tensor]:
    """One adapter of rank sum r_k that equals the aggregate exactly at scaling 1 (alpha = its rank)."""
    tensors: dict[str, torch.Tensor] = {}
    for layer in layers_of(adapters[0].tensors):
        a = [_factor(adapter.tensors[f"{layer}.lora_a"]) for adapter in adapters]
        b = [_factor(adapter.tensors[f"{layer}.lora_b"]) * (adapter.weight * adapter.alpha / adapter.rank)
             for adapter in adapters]  # fmt: skip
        tensors[f"{layer}.lora_a"] = torch.cat(a, 0).contiguous()
        tensors[f"{layer}.lora_b"] = torch.cat(b, 1).contiguous()
    return tensors


def _factor(tensor: torch.Tensor) -> torch.Tensor:
    """A factor as the stacked adapter holds it: one of a dtype the validator takes as it is, any other (float8, which
    validators before this check accepted, has no products) in float32, which holds its values exactly."""
    return tensor if tensor.dtype in FACTOR_DTYPES else tensor.float()


def merged_weights(state: dict[str, Any], deltas: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """The input revision's weights plus each layer's delta; a delta on a head tied to the embedding unties it."""
    weights = {name: tensor.clone() for name, tensor in state["state_dict"].items()}
    config = {**state["decoder_config"]}
    for layer, delta in deltas.items():
        name = f"{layer}.weight"
        if name not in weights:
            raise CheckpointError(f"the aggregate changes {name!r}, which the input revision does not have")
        weights[name] = (weights[name].double() + delta).to(weights[name].dtype)
        if layer.endswith("head") and config.get("tie_embeddings", True):
            config["tie_embeddings"] = False  # the merged head is no longer the embedding
    return weights, config


def reconcile(root: Path, window_id: str) -> dict[str, Any]:
    """Aggregate the accepted contributions, score the candidate on the gate split, promote or hold (scored ->
    reconciled). A promotion moves the program's pointer to the candidate: the next window's input."""
    from lit_psion.checkpoint_io import load_verified, write_checkpoint
    from lit_psion.nn.decoder import Decoder, DecoderConfig

    program = Program(root)
    plan = program.plan(window_id)
    dispositions = record(program.window_dir(window_id) / DISPOSITIONS)["assignments"]
    sealed = sealed_submissions(program, window_id)
    accepted = [aid for aid, entry in dispositions.items() if entry["disposition"] == ACCEPTED]
    revision = program.revision(plan.input_checkpoint, plan.input_revision)
    state = load_verified(revision)
    adapters, digests = _accepted_adapters(program, plan, accepted, sealed)
    samples = plan_data(program, plan).samples("val")
    start, stop = plan.held_out["gate"]
    model = Decoder(DecoderConfig(**state["decoder_config"]))
    model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()})
    input_loss = held_out_loss(model, samples, start, stop)
    candidate = candidate_path = stacked_digest = None
    weights = {aid: adapter.weight for aid, adapter in zip(accepted, adapters, strict=True)}
    scores = {"input_loss": input_loss}
    reasons = []
    if adapters:
        merged, config = merged_weights(state, exact_delta(adapters))
        directory = own_directory(program.window_dir(window_id) / "aggregate") / "candidate"
        write_checkpoint({"global_step": int(window_id.removeprefix("w-")), "state_dict": merged,
                          "decoder_config": config, "model_signature": state.get("model_signature"),
                          "lit_psion": {"writer": f"window {window_id} aggregate", "parent": plan.input_revision}},
                         directory)  # fmt: skip
        candidate_path = f"windows/{window_id}/{CANDIDATE}"
        candidate = verify_checkpoint(directory).manifest_sha256
        program.revision(candidate_path, candidate)  # inside the root, and what was just written
        data = safetensors_bytes(stacked(adapters), {"rank": str(sum(a.rank for a in adapters)), "scaling": "1.0"})
        atomic_write_bytes(program.window_dir(window_id) / "aggregate" / "stacked_adapter.safetensors", data)
        stacked_digest = sha256_bytes(data)
        merged_model = Decoder(DecoderConfig(**config))
        merged_model.load_state_dict({k.removeprefix("model."): v for k, v in merged.items()})
        candidate_loss = held_out_loss(merged_model, samples, start, stop)
        if math.isfinite(candidate_loss):
            scores["candidate_loss"] = candidate_loss
        improvement = input_loss - candidate_loss
        if not math.isfinite(candidate_loss):
            reasons.append("candidate_not_finite")
        elif improvement < 0:
            reasons.append("held_out_regression")
        elif improvement == 0:
            reasons.append("no_improvement")
        elif improvement < plan.gate.get("min_delta", 0.0):
            reasons.append("below_min_delta")
    else:
        reasons.append("no_accepted_contributions")
    decision = "hold" if reasons else "promote"
    promotion = {"window_id": window_id, "decision": decision, "reasons": reasons, "scores": scores,
                 "previous_revision": plan.input_revision, "candidate_revision": candidate,
                 "candidate_checkpoint": candidate_path, "accepted_artifacts": digests, "weights": weights,
                 "next_revision": candidate if decision == "promote" else plan.input_revision}  # fmt: skip
    receipts = [
        AdapterAggregationReceipt(window_id=window_id, rule=RULE, input_revision=plan.input_revision,
                                  accepted_artifacts=tuple(digests), weights=weights, candidate_revision=candidate,
                                  candidate_checkpoint=candidate_path, stacked_adapter_digest=stacked_digest),
        PolicyPromotionReceipt(stage_id=window_id, previous_revision=plan.input_revision,
                               candidate_revision=candidate or "none", split="gate",
                               scores={k: v for k, v in scores.items() if math.isfinite(v)}, decision=decision,
                               reasons=tuple(reasons), accepted_artifacts=tuple(digests)),
    ]  # fmt: skip
    atomic_write_json(program.window_dir(window_id) / PROMOTION, promotion)
    moved = (lambda: program.move_pointer(candidate, candidate_path, window_id)) if decision == "promote" else None
    program.transition(window_id, RECONCILED, {"decision": decision, "next_revision": promotion["next_revision"]},
                       receipts, then=moved)  # fmt: skip
    return promotion


def _accepted_adapters(program: Program, plan: WindowPlan, accepted: list[str],
                       sealed: dict[str, Any]) -> tuple[list[Adapter], list[str]]:  # fmt: skip
    """The accepted adapters, re-read and held to their sealed digests, weighted by tokens trained."""
    from safetensors.torch import load

    loaded, digests, tokens = [], [], []
    for aid in accepted:
        data, meta = submission(program, plan.window_id, aid)
        if data is None or meta is None or (sha256_bytes(data), sha256_bytes(meta)) != (
                sealed[aid]["artifact"], sealed[aid]["metadata"]):  # fmt: skip
            raise CheckpointError(f"accepted contribution {aid} of {plan.window_id} changed after it was scored "
                                  f"(sealed sha256 {sealed[aid]['artifact'][:12]}...); nothing was aggregated: put "
                                  f"back the bytes that were sealed (the contributor's copy of "
                                  f"contributions/{aid}, or a backup), then window close again")  # fmt: skip
        loaded.append(load(data))
        tokens.append(json.loads(meta)["summary"]["tokens"])
        digests.append(sealed[aid]["artifact"])
    total = sum(tokens)
    rank, alpha = plan.lora["rank"], plan.lora["alpha"]
    return [Adapter(t, rank, alpha, n / total) for t, n in zip(loaded, tokens, strict=True)], digests
