"""Evidence-driven Cold -> Warm -> Hot growth of a graph's level-0 operator (seed 002, Archive 04).

Plain functions over a :class:`~lit_psion.nn.graph.Graph` and its
:class:`~lit_psion.nn.sparse.SparseMaskedLinear` operator; :func:`grow_cycle` runs one cycle.
Scheduling (when a cycle runs) and receipts belong to the caller
(:class:`lit_psion.callbacks.GrowthPlanner`).

1. **Cold -> Warm** (:func:`cold_regions`, :func:`shortlist`). Every entry outside the structure is
   Cold. Regions group them: a region is the entries through which one dim of a target node reads one
   source node at one lag. A shadow delta of zeros on every Cold entry gives their *prospective*
   gradients on ``snr_batches`` batches (the base is untouched); a region's SNR is
   ``||mean g_R|| / (sqrt(var g_R) + eps)``. Regions at or above ``snr_threshold`` are shortlisted,
   best ``shortlist`` first.
2. **Warm probe** (:func:`probe`). For each shortlisted region a *frozen* micro-rollout: ``probe_steps``
   Adam steps on a shadow delta on that region alone (the structure and every Hot value stay fixed),
   then the change of ``L_total = L_task * gamma(C)`` (the complexity the region would add included)
   on ``probe_batches`` fresh batches, paired with the base on the same batches. Its score is
   ``-(mean change) - variance_weight * std``; the result is a typed :class:`Probe`.
3. **Warm -> Hot** (:func:`commit`). Probes with a positive score are committed best first, at most
   ``commits_per_object`` per object (a node's ``core`` or an ``edge``) per cycle, within the object's
   ``struct_budget`` (and ``active_budget``) and only while complexity stays below the barrier's limit;
   of regions that differ only in lag (they overlap: states one step apart are alike) one per cycle.
   A committed region starts from its probe delta and its probe's Adam moments; the rest of the
   optimizer's state follows the structure (:func:`~lit_psion.nn.sparse.follow_parameter`).
4. **Prune** (:func:`prox_l1`, :func:`prune`). With ``l1 > 0`` every optimizer step ends with prox-L1
   (soft-thresholding the Hot values by ``lr * l1``) and entries it drove to zero go back to Cold; an
   object whose active entries exceed ``active_budget`` loses its lowest Taylor scores
   ``0.5 * v * w^2`` (``v``: Adam's second moment). Entries committed in this cycle are not pruned in
   it, and a commit never takes an object over ``active_budget``.

Every commit and prune is returned as a :class:`StructureChange` with its evidence.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from lit_psion.core.errors import ConfigError
from lit_psion.nn.barrier import Barrier
from lit_psion.nn.graph import Graph
from lit_psion.nn.optim import LARGEST_RATE, a_rate
from lit_psion.nn.sparse import SparseMaskedLinear, follow_parameter

TaskLoss = Callable[[Any], torch.Tensor]
"""``L_task`` of a batch, as a scalar tensor that backpropagates to the operator (and its shadow)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GrowthPolicy:
    """How a growth cycle shortlists, probes, commits and prunes (seed 002's Cold -> Warm -> Hot rules)."""

    snr_batches: int = 4
    """Batches ``m`` the prospective gradients are averaged over (at least 2: the SNR needs a variance)."""
    snr_threshold: float = 1.0
    """The SNR a region needs to be shortlisted."""
    shortlist: int = 16
    """Most regions probed per cycle."""
    probe_steps: int = 3
    """``K``: Adam steps of a frozen micro-rollout."""
    probe_batches: int = 4
    """Fresh batches a probe's loss change is measured on."""
    probe_lr: float = 1e-2
    """The micro-rollout's Adam learning rate."""
    commits_per_object: int = 2
    """Most regions committed per object per cycle (seed 002's hard rule: at most 2)."""
    struct_budget: int | None = None
    """Most Hot entries per object (C_struct); ``None``: the object's whole block."""
    active_budget: int | None = None
    """Most active (``|w| > eps``) entries per object (C_active); ``None``: no cap."""
    l1: float = 0.0
    """Prox-L1 strength after every optimizer step (0: off)."""
    variance_weight: float = 0.5
    """``beta`` in ``score = -mean - beta * std``."""
    eps: float = 1e-8
    """What counts as zero."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("shortlist", "probe_steps", "probe_batches", "commits_per_object"):
            if getattr(self, name) < 1:
                problems.append(f"growth {name} must be >= 1, got {getattr(self, name)!r}")
        if self.snr_batches < 2:
            problems.append(f"growth snr_batches must be >= 2 (the SNR needs a variance), got {self.snr_batches!r}")
        if self.commits_per_object > 2:
            problems.append(f"growth commits_per_object is at most 2 (seed 002's hard rule), "
                            f"got {self.commits_per_object!r}")  # fmt: skip
        for name in ("struct_budget", "active_budget"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"growth {name} must be >= 1 or null (no cap), got {getattr(self, name)!r}")
        if not (math.isfinite(self.l1) and self.l1 >= 0) or not a_rate(self.probe_lr):
            problems.append(f"growth l1 must be a finite number >= 0 and probe_lr one > 0 (at most "
                            f"{LARGEST_RATE:.3g}), got {self.l1!r} and {self.probe_lr!r}")  # fmt: skip
        for name in ("snr_threshold", "variance_weight"):  # a negative weight ranks noisy regions first
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                problems.append(f"growth {name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if not (math.isfinite(self.eps) and self.eps > 0):  # what counts as zero: at or below 0, nothing does
            problems.append(f"growth eps must be a finite number > 0, got {self.eps!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def batches_per_cycle(self) -> int:
        """Probe batches a cycle draws: SNR batches, then micro-rollout batches, then evaluation batches."""
        return self.snr_batches + self.probe_steps + self.probe_batches


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """A Warm region after its frozen micro-rollout: where it would go, where it would start, and the evidence."""

    entries: torch.Tensor
    """The region's operator entries (2, k)."""
    delta: torch.Tensor
    """The micro-rollout's values on them (k,): a committed region starts here."""
    exp_avg: torch.Tensor
    """The micro-rollout's bias-corrected Adam first moment (k,)."""
    exp_avg_sq: torch.Tensor
    """The micro-rollout's bias-corrected Adam second moment (k,)."""
    snr: float
    """The region's gradient SNR, what shortlisted it."""
    loss_change_mean: float
    """Mean change of ``L_total`` over the evaluation batches (negative: the region helps)."""
    loss_change_std: float
    """Its standard deviation over the evaluation batches."""
    score: float
    """``-loss_change_mean - variance_weight * loss_change_std``: committed only if positive."""

    @property
    def evidence(self) -> dict[str, float]:
        return {"snr": self.snr, "loss_change_mean": self.loss_change_mean, "loss_change_std": self.loss_change_std,
                "score": self.score}  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StructureChange:
    """One commit or prune: what :class:`lit_psion.core.receipts.GrowthReceipt` records, less the stage and step."""

    action: Literal["commit", "prune"]
    object: str
    region: str
    entries: int
    complexity_before: int
    complexity_after: int
    gamma_after: float
    evidence: dict[str, float]


# Cold -> Warm -------------------------------------------------------------------------------------


def object_use(graph: Graph, indices: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
    """Entries (or, with ``active``, active entries) of ``indices`` (2, k) per object, indexed
    ``target * n_nodes + source``: (n_nodes ** 2,)."""
    where = graph.coordinates(indices)
    objects = where["target"] * graph.n_nodes + where["source"]
    weights = torch.ones(objects.shape[0]) if active is None else active.float().cpu()
    return torch.zeros(graph.n_nodes**2).index_add(0, objects, weights)


def struct_budget(graph: Graph, policy: GrowthPolicy) -> int:
    """C_struct: the most Hot entries one object may hold."""
    whole = graph.dim * graph.dim * graph.history
    return whole if policy.struct_budget is None else policy.struct_budget


def cold_regions(graph: Graph, policy: GrowthPolicy) -> tuple[torch.Tensor, torch.Tensor]:
    """Every Cold entry (2, k) and its region id (k,); regions of objects with no budget left are left out."""
    operator = graph.operator
    hot = torch.zeros(operator.out_features, operator.in_features, dtype=torch.bool)
    hot[operator.indices[0].cpu(), operator.indices[1].cpu()] = True
    cold = (~hot).nonzero().T
    where = graph.coordinates(cold)
    region = ((where["target"] * graph.dim + where["target_dim"]) * graph.n_nodes + where["source"]) \
        * graph.history + where["lag"]  # fmt: skip
    used = object_use(graph, operator.indices.cpu())
    room = struct_budget(graph, policy) - used[where["target"] * graph.n_nodes + where["source"]]
    keep = room > 0
    return cold[:, keep].to(operator.indices.device), region[keep]


def shortlist(task_loss: TaskLoss, operator: SparseMaskedLinear, cold: torch.Tensor, region: torch.Tensor,
              batches: Sequence[Any], policy: GrowthPolicy) -> list[tuple[int, float]]:  # fmt: skip
    """The regions whose prospective-gradient SNR over ``batches`` reaches the threshold: (region, snr), best first."""
    if cold.shape[1] == 0:
        return []
    grads = []
    for batch in batches:
        delta = operator.values.new_zeros(cold.shape[1]).requires_grad_()
        operator.shadow = (cold, delta)
        (grad,) = torch.autograd.grad(task_loss(batch), delta)
        grads.append(grad.detach().cpu())
    operator.shadow = None
    g = torch.stack(grads)  # (m, k)
    mean = g.mean(0)
    n_regions = int(region.max()) + 1
    signal = torch.zeros(n_regions).index_add(0, region, mean**2).sqrt()
    spread = torch.zeros(n_regions).index_add(0, region, ((g - mean) ** 2).sum(0) / (len(batches) - 1)).sqrt()
    snr = signal / (spread + 1e-12)  # the seed's eps: only guards an exactly constant gradient
    present = torch.zeros(n_regions, dtype=torch.bool)
    present[region] = True
    order = [int(r) for r in snr.argsort(descending=True) if present[r] and snr[r] >= policy.snr_threshold]
    return [(r, float(snr[r])) for r in order[: policy.shortlist]]


# Warm probe ---------------------------------------------------------------------------------------


def soft_threshold(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """Prox-L1: shrink every value towards zero by ``threshold`` (those within it become exactly zero)."""
    return values.sign() * (values.abs() - threshold).clamp(min=0) if threshold > 0 else values


def probe(task_loss: TaskLoss, operator: SparseMaskedLinear, entries: torch.Tensor, train_batches: Sequence[Any],
          eval_batches: Sequence[Any], snr: float, barrier: Barrier, policy: GrowthPolicy) -> Probe:  # fmt: skip
    """A frozen micro-rollout on ``entries`` (2, k): Adam on a shadow delta alone over ``train_batches``,
    then the paired change of ``L_total`` on ``eval_batches``. Leaves ``operator.shadow`` set."""
    before, after = operator.nnz, operator.nnz + entries.shape[1]
    delta = operator.values.new_zeros(entries.shape[1]).requires_grad_()
    adam = torch.optim.Adam([delta], lr=policy.probe_lr)
    operator.shadow = (entries, delta)
    for batch in train_batches:  # frozen micro-rollout: only the shadow delta moves
        (delta.grad,) = torch.autograd.grad(task_loss(batch), delta)
        adam.step()
        with torch.no_grad():
            delta.copy_(soft_threshold(delta, policy.probe_lr * policy.l1))
    changes = []
    with torch.no_grad():
        for batch in eval_batches:
            operator.shadow = (entries, delta)
            probed = float(task_loss(batch))
            operator.shadow = None
            base = float(task_loss(batch))
            changes.append(probed * barrier.gamma(after) - base * barrier.gamma(before))
    changes_t = torch.tensor(changes, dtype=torch.float64)
    mean = float(changes_t.mean())
    std = float(changes_t.std()) if len(changes) > 1 else 0.0
    # the probe's bias-corrected Adam moments: a committed region goes on from where its probe was
    state, (beta1, beta2) = adam.state[delta], adam.param_groups[0]["betas"]
    steps = len(train_batches)
    return Probe(entries=entries, delta=delta.detach(), exp_avg=state["exp_avg"] / (1 - beta1**steps),
                 exp_avg_sq=state["exp_avg_sq"] / (1 - beta2**steps), snr=snr, loss_change_mean=mean,
                 loss_change_std=std, score=-mean - policy.variance_weight * std)  # fmt: skip


# Warm -> Hot --------------------------------------------------------------------------------------


def admit(graph: Graph, probes: Sequence[Probe], barrier: Barrier, policy: GrowthPolicy) -> list[tuple[Probe, int]]:
    """The probes a cycle commits, best first, under the rules (see the module docstring), each with its object."""
    operator = graph.operator
    per_object: dict[int, int] = {}
    used = object_use(graph, operator.indices.cpu())
    active = object_use(graph, operator.indices.cpu(), operator.values.detach().abs() > policy.eps)
    complexity = operator.nnz
    chosen, covered = [], set()
    for candidate in sorted(probes, key=lambda p: -p.score):
        where, size = graph.coordinates(candidate.entries.cpu()), candidate.entries.shape[1]
        obj = int(where["target"][0] * graph.n_nodes + where["source"][0])
        reads = (obj, int(where["target_dim"][0]))  # the same read at another lag overlaps this one
        if candidate.score <= 0 or per_object.get(obj, 0) >= policy.commits_per_object or reads in covered:
            continue
        if used[obj] + size > struct_budget(graph, policy) or not barrier.admits(complexity, size):
            continue
        if policy.active_budget is not None and active[obj] + size > policy.active_budget:
            continue
        per_object[obj] = per_object.get(obj, 0) + 1
        covered.add(reads)
        used[obj] += size
        active[obj] += size
        chosen.append((candidate, obj))
        complexity += size
    return chosen


def commit(graph: Graph, optimizer: torch.optim.Optimizer, probes: Sequence[Probe], barrier: Barrier,
           policy: GrowthPolicy) -> list[StructureChange]:  # fmt: skip
    """Commit the admitted probes (their entries join at the end of ``values``); the optimizer follows."""
    operator = graph.operator
    chosen = admit(graph, probes, barrier, policy)
    if not chosen:
        return []
    old = operator.values
    source = operator.grow(torch.cat([p.entries for p, _ in chosen], 1), torch.cat([p.delta for p, _ in chosen]))
    fresh = {"exp_avg": torch.cat([p.exp_avg for p, _ in chosen]),
             "exp_avg_sq": torch.cat([p.exp_avg_sq for p, _ in chosen])}  # fmt: skip
    follow_parameter(optimizer, old, operator.values, source, fresh)
    operator.recalibrate()
    changes, complexity = [], old.numel()
    for committed, obj in chosen:
        size = committed.entries.shape[1]
        changes.append(StructureChange(
            action="commit", object=object_name(obj, graph.n_nodes), region=region_name(graph, committed.entries),
            entries=size, complexity_before=complexity, complexity_after=complexity + size,
            gamma_after=barrier.gamma(complexity + size), evidence=committed.evidence,
        ))  # fmt: skip
        complexity += size
    return changes


# Prune --------------------------------------------------------------------------------------------


def prox_l1(operator: SparseMaskedLinear, threshold: float) -> None:
    """Soft-threshold the Hot values in place (entries it drives to zero are consolidated by :func:`prune`)."""
    with torch.no_grad():
        operator.values.copy_(soft_threshold(operator.values, threshold))


def prune_mask(graph: Graph, optimizer: torch.optim.Optimizer, policy: GrowthPolicy,
               protected: int = 0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Which Hot entries go back to Cold (nnz,) and every entry's Taylor score (nnz,); the last
    ``protected`` entries are left alone."""
    operator = graph.operator
    values = operator.values.detach()
    drop = torch.zeros(operator.nnz, dtype=torch.bool)
    candidate = torch.ones(operator.nnz, dtype=torch.bool)
    candidate[operator.nnz - protected :] = False
    if policy.l1 > 0:
        drop |= (values.abs() <= policy.eps).cpu() & candidate  # consolidated to identity by prox-L1
    state = optimizer.state.get(operator.values, {})
    curvature = state.get("exp_avg_sq", torch.ones_like(values))
    taylor = (0.5 * curvature * values**2).cpu()
    if policy.active_budget is not None:
        objects = _objects(graph)
        active = (values.abs() > policy.eps).cpu() & ~drop
        for obj in torch.unique(objects[active]).tolist():
            members = (active & (objects == obj)).nonzero().squeeze(1)
            excess = members.numel() - policy.active_budget
            prunable = members[candidate[members]]
            if excess > 0:
                drop[prunable[taylor[prunable].argsort()[:excess]]] = True
    return drop, taylor


def prune(graph: Graph, optimizer: torch.optim.Optimizer, barrier: Barrier, policy: GrowthPolicy,
          protected: int = 0) -> list[StructureChange]:  # fmt: skip
    """Send consolidated and over-budget entries back to Cold, one change per object; the optimizer follows."""
    operator = graph.operator
    drop, taylor = prune_mask(graph, optimizer, policy, protected)
    if not drop.any():
        return []
    values, objects = operator.values.detach().cpu(), _objects(graph)
    changes, complexity = [], operator.nnz
    for obj in torch.unique(objects[drop]).tolist():
        members = drop & (objects == obj)
        size = int(members.sum())
        changes.append(StructureChange(
            action="prune", object=object_name(obj, graph.n_nodes),
            region=region_name(graph, operator.indices[:, members.to(operator.indices.device)]), entries=size,
            complexity_before=complexity, complexity_after=complexity - size,
            gamma_after=barrier.gamma(complexity - size),
            evidence={"taylor_score": float(taylor[members].sum()),
                      "abs_value_max": float(values[members].abs().max())},
        ))  # fmt: skip
        complexity -= size
    old = operator.values
    source = operator.drop(drop.nonzero().squeeze(1))
    follow_parameter(optimizer, old, operator.values, source)
    operator.recalibrate()
    return changes


# One cycle ----------------------------------------------------------------------------------------


def grow_cycle(graph: Graph, task_loss: TaskLoss, optimizer: torch.optim.Optimizer, batches: Sequence[Any],
               barrier: Barrier, policy: GrowthPolicy) -> list[StructureChange]:  # fmt: skip
    """One grow-then-prune cycle on ``graph``'s operator, on ``policy.batches_per_cycle`` probe batches.

    Returns:
        The commits (best first), then the prunes (by object), in the order they happened.
    """
    if len(batches) != policy.batches_per_cycle:
        raise ValueError(f"a growth cycle needs {policy.batches_per_cycle} batches, got {len(batches)}")
    snr_batches, rest = batches[: policy.snr_batches], batches[policy.snr_batches :]
    train_batches, eval_batches = rest[: policy.probe_steps], rest[policy.probe_steps :]
    operator = graph.operator
    try:
        cold, region = cold_regions(graph, policy)
        candidates = shortlist(task_loss, operator, cold, region, snr_batches, policy)
        probes = [probe(task_loss, operator, cold[:, region == r], train_batches, eval_batches, snr, barrier, policy)
                  for r, snr in candidates if barrier.admits(operator.nnz, int((region == r).sum()))]  # fmt: skip
    finally:
        operator.shadow = None
    commits = commit(graph, optimizer, probes, barrier, policy)
    return commits + prune(graph, optimizer, barrier, policy, protected=sum(c.entries for c in commits))


def object_name(obj: int, n_nodes: int) -> str:
    """``core:N`` for a node's own block, ``edge:S->T`` for a connector."""
    target, source = divmod(obj, n_nodes)
    return f"core:{target}" if target == source else f"edge:{source}->{target}"


def region_name(graph: Graph, entries: torch.Tensor) -> str:
    """The reads of entries (2, k), e.g. ``3.d0<-2@lag1,3.d1<-2@lag1``."""
    where = graph.coordinates(entries.cpu())
    rows = sorted({(int(t), int(d), int(s), int(lag)) for t, d, s, lag in
                   zip(where["target"], where["target_dim"], where["source"], where["lag"], strict=True)})  # fmt: skip
    return ",".join(f"{t}.d{d}<-{s}@lag{lag}" for t, d, s, lag in rows)


def _objects(graph: Graph) -> torch.Tensor:
    """Each Hot entry's object (nnz,)."""
    where = graph.coordinates(graph.operator.indices.cpu())
    return where["target"] * graph.n_nodes + where["source"]
