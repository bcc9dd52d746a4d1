"""The growth planner (seed 002, Archive 04): evidence-driven Cold -> Warm -> Hot growth of a graph-core operator.

Every ``every_n_steps`` steps (after step 1, then every N) one *cycle* runs on the level-0 operator
of a :class:`lit_psion.models.GraphCore`:

1. **Cold -> Warm.** Every entry outside the structure is Cold. Regions group them: a region is the
   entries through which one dim of a target node reads one source node at one lag. A shadow delta
   of zeros on every Cold entry gives their *prospective* gradients on ``snr_batches`` batches (the
   base is untouched); a region's SNR is ``||mean g_R|| / (sqrt(var g_R) + eps)``. Regions at or
   above ``snr_threshold`` are shortlisted, best ``shortlist`` first.
2. **Warm probe.** For each shortlisted region a *frozen* micro-rollout: ``probe_steps`` Adam steps
   on a shadow delta on that region alone (the structure and every Hot value stay fixed), then the
   change of ``L_total = L_task * gamma(C)`` (the complexity the region would add included) on
   ``probe_batches`` fresh batches, paired with the base on the same batches. Its score is
   ``-(mean change) - variance_weight * std``.
3. **Warm -> Hot.** Regions with a positive score are committed best first, at most
   ``commits_per_object`` per object (a node's ``core`` or an ``edge``) per cycle, within the
   object's ``struct_budget`` (and ``active_budget``) and only while complexity stays below the
   barrier's limit; of regions that differ only in lag (they overlap: states one step apart are
   alike) one per cycle. A committed region starts from its probe delta and its probe's Adam
   moments; the rest of the optimizer's state follows the structure.
4. **Prune.** With ``l1 > 0`` every optimizer step ends with prox-L1 (soft-thresholding the Hot
   values by ``lr * l1``, ``lr`` as the scheduler has just set it) and entries it drove to zero go
   back to Cold; an object whose active entries exceed ``active_budget`` loses its lowest Taylor
   scores ``0.5 * v * w^2`` (``v``: Adam's second moment). Entries committed in this cycle are
   not pruned in it, and a commit never takes an object over ``active_budget``.

Gradient accumulation is honoured (cycles run on optimizer steps only); growth on several
processes is refused (DDP cannot follow a replaced parameter). With the Python API, list the
planner before any checkpoint callback so a checkpoint taken on a cycle step holds that cycle
(the CLI puts ``trainer.callbacks`` first).

Each commit and prune leaves a :class:`GrowthReceipt` with its evidence. Probe batches come from
the datamodule's ``sample_batch(key)`` with keys fixed by the step, so the training order is left
alone and a resumed run makes the same decisions: the planner's state is the structure itself
(in the model's checkpoint) plus its counters.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from typing_extensions import override

from lit_psion.callbacks.evidence import STAGE, EvidenceCallback
from lit_psion.core.errors import ConfigError
from lit_psion.core.receipts import GrowthReceipt
from lit_psion.nn.barrier import admissible, gamma
from lit_psion.nn.sparse import follow_parameter


class GrowthPlanner(EvidenceCallback):
    """Grow and prune a GraphCore's level-0 operator by evidence (see the module docstring).

    Args:
        every_n_steps: Steps between cycles (the first runs after step 1).
        until_step: No cycles after this step (``None``: cycles all run long).
        snr_batches: Batches ``m`` the prospective gradients are averaged over.
        snr_threshold: The SNR a region needs to be shortlisted.
        shortlist: Most regions probed per cycle.
        probe_steps: ``K``, steps of a frozen micro-rollout.
        probe_batches: Fresh batches a probe's loss change is measured on.
        probe_lr: The micro-rollout's Adam learning rate.
        commits_per_object: Most regions committed per object per cycle (the seed's hard rule: 2).
        struct_budget: Most Hot entries per object (C_struct); ``None``: the object's whole block.
        active_budget: Most active (``|w| > eps``) entries per object (C_active); ``None``: no cap.
        l1: Prox-L1 strength after every step (0: off).
        variance_weight: ``beta`` in ``score = -mean - beta * std``.
        eps: What counts as zero.
    """

    def __init__(self, every_n_steps: int = 50, until_step: int | None = None, snr_batches: int = 4,
                 snr_threshold: float = 1.0, shortlist: int = 16, probe_steps: int = 3, probe_batches: int = 4,
                 probe_lr: float = 1e-2, commits_per_object: int = 2, struct_budget: int | None = None,
                 active_budget: int | None = None, l1: float = 0.0, variance_weight: float = 0.5,
                 eps: float = 1e-8) -> None:  # fmt: skip
        for name, value in (("every_n_steps", every_n_steps), ("snr_batches", snr_batches),
                            ("shortlist", shortlist), ("probe_steps", probe_steps),
                            ("probe_batches", probe_batches), ("commits_per_object", commits_per_object)):  # fmt: skip
            if value < 1:
                raise ConfigError(f"growth {name} must be >= 1, got {value!r}")
        if commits_per_object > 2:
            raise ConfigError(f"growth commits_per_object is at most 2 (seed 002's hard rule), "
                              f"got {commits_per_object!r}")  # fmt: skip
        for name, value in (("struct_budget", struct_budget), ("active_budget", active_budget)):
            if value is not None and value < 1:
                raise ConfigError(f"growth {name} must be >= 1 or null (no cap), got {value!r}")
        if snr_batches < 2:
            raise ConfigError(f"growth snr_batches must be >= 2 (the SNR needs a variance), got {snr_batches!r}")
        if l1 < 0 or probe_lr <= 0:
            raise ConfigError(f"growth l1 must be >= 0 and probe_lr > 0, got {l1!r} and {probe_lr!r}")
        self.every_n_steps, self.until_step = every_n_steps, until_step
        self.snr_batches, self.snr_threshold, self.shortlist = snr_batches, snr_threshold, shortlist
        self.probe_steps, self.probe_batches, self.probe_lr = probe_steps, probe_batches, probe_lr
        self.commits_per_object = commits_per_object
        self.struct_budget, self.active_budget = struct_budget, active_budget
        self.l1, self.variance_weight, self.eps = l1, variance_weight, eps
        self.counters = {"cycles": 0, "commits": 0, "prunes": 0}

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "growable") or not hasattr(pl_module, "task_loss"):
            raise ConfigError(f"GrowthPlanner grows a GraphCore; {type(pl_module).__name__} has no growable graph "
                              f"(remove the growth callback or use lit_psion.models.GraphCore)")  # fmt: skip
        if not hasattr(trainer.datamodule, "sample_batch"):
            have = "fit was given no datamodule" if trainer.datamodule is None else \
                f"{type(trainer.datamodule).__name__} lacks it"  # fmt: skip
            raise ConfigError(f"GrowthPlanner probes on datamodule.sample_batch(key), but {have} "
                              f"(use DynamicsDataModule)")  # fmt: skip
        if trainer.world_size > 1:
            raise ConfigError("GrowthPlanner edits parameters between steps, which DDP's reducer cannot follow: "
                              "grow on one process (devices: 1)")  # fmt: skip

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: no optimizer step yet, and the gathered gradient must survive
        step = trainer.global_step
        optimizer = trainer.optimizers[0]
        if self.l1 > 0:
            self._prox_l1(pl_module, optimizer.param_groups[0]["lr"] * self.l1)
        if (step - 1) % self.every_n_steps or (self.until_step is not None and step > self.until_step):
            return
        with torch.enable_grad():
            self.cycle(trainer, pl_module, step)

    def cycle(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """One grow-then-prune cycle at ``step``."""
        self.counters["cycles"] += 1
        batches = [_to(trainer.datamodule.sample_batch(step * 1000 + i), pl_module.device)
                   for i in range(self.snr_batches + self.probe_steps + self.probe_batches)]  # fmt: skip
        snr_batches = batches[: self.snr_batches]
        train_batches = batches[self.snr_batches : self.snr_batches + self.probe_steps]
        eval_batches = batches[self.snr_batches + self.probe_steps :]
        graph, operator = pl_module.growable, pl_module.growable.operator
        optimizer = trainer.optimizers[0]
        was_training = pl_module.training
        pl_module.eval()
        try:
            cold, region = self._cold_regions(graph)
            shortlist = self._shortlist(pl_module, operator, cold, region, snr_batches)
            limit = pl_module.hparams.complexity_limit
            probes = [self._probe(pl_module, operator, cold[:, region == r], eval_batches, train_batches, snr)
                      for r, snr in shortlist
                      if admissible(pl_module.complexity, int((region == r).sum()), limit)]  # fmt: skip
        finally:
            operator.shadow = None
            pl_module.train(was_training)
        committed = self._commit(trainer, pl_module, graph, optimizer, probes, step)
        self._prune(trainer, pl_module, graph, optimizer, step, protected=committed)

    # Cold -> Warm ---------------------------------------------------------------------------------

    def _cold_regions(self, graph: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Every Cold entry (2, k) and its region id; regions of objects with no budget left are left out."""
        operator = graph.operator
        hot = torch.zeros(operator.out_features, operator.in_features, dtype=torch.bool)
        hot[operator.indices[0].cpu(), operator.indices[1].cpu()] = True
        cold = (~hot).nonzero().T
        where = graph.coordinates(cold)
        region = ((where["target"] * graph.dim + where["target_dim"]) * graph.n_nodes + where["source"]) \
            * graph.history + where["lag"]  # fmt: skip
        used = self._object_use(graph, operator.indices.cpu())
        room = self._budget(graph) - used[where["target"] * graph.n_nodes + where["source"]]
        keep = room > 0
        return cold[:, keep].to(operator.indices.device), region[keep]

    def _object_use(self, graph: Any, indices: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """Hot (or, with ``active``, active) entries per object, indexed ``target * n_nodes + source``."""
        where = graph.coordinates(indices)
        objects = where["target"] * graph.n_nodes + where["source"]
        weights = torch.ones(objects.shape[0]) if active is None else active.float().cpu()
        return torch.zeros(graph.n_nodes**2).index_add(0, objects, weights)

    def _budget(self, graph: Any) -> int:
        whole = graph.dim * graph.dim * graph.history
        return whole if self.struct_budget is None else self.struct_budget

    def _shortlist(self, pl_module: L.LightningModule, operator: Any, cold: torch.Tensor, region: torch.Tensor,
                   batches: list[dict]) -> list[tuple[int, float]]:  # fmt: skip
        if cold.shape[1] == 0:
            return []
        grads = []
        for batch in batches:
            delta = operator.values.new_zeros(cold.shape[1]).requires_grad_()
            operator.shadow = (cold, delta)
            (grad,) = torch.autograd.grad(pl_module.task_loss(batch), delta)
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
        order = [int(r) for r in snr.argsort(descending=True) if present[r] and snr[r] >= self.snr_threshold]
        return [(r, float(snr[r])) for r in order[: self.shortlist]]

    # Warm probe -------------------------------------------------------------------------------------

    def _probe(self, pl_module: L.LightningModule, operator: Any, entries: torch.Tensor, eval_batches: list[dict],
               train_batches: list[dict], snr: float) -> dict[str, Any]:  # fmt: skip
        limit, scale = pl_module.hparams.complexity_limit, pl_module.hparams.barrier_scale
        before, after = pl_module.complexity, pl_module.complexity + entries.shape[1]
        delta = operator.values.new_zeros(entries.shape[1]).requires_grad_()
        adam = torch.optim.Adam([delta], lr=self.probe_lr)
        operator.shadow = (entries, delta)
        for batch in train_batches:  # frozen micro-rollout: only the shadow delta moves
            (delta.grad,) = torch.autograd.grad(pl_module.task_loss(batch), delta)
            adam.step()
            with torch.no_grad():
                delta.copy_(_soft_threshold(delta, self.probe_lr * self.l1))
        changes = []
        with torch.no_grad():
            for batch in eval_batches:
                operator.shadow = (entries, delta)
                probed = float(pl_module.task_loss(batch))
                operator.shadow = None
                base = float(pl_module.task_loss(batch))
                changes.append(probed * gamma(after, limit, scale) - base * gamma(before, limit, scale))
        changes_t = torch.tensor(changes, dtype=torch.float64)
        mean = float(changes_t.mean())
        std = float(changes_t.std()) if len(changes) > 1 else 0.0
        score = -mean - self.variance_weight * std
        # the probe's bias-corrected Adam moments: a committed region goes on from where its probe was
        state, (beta1, beta2) = adam.state[delta], adam.param_groups[0]["betas"]
        moments = {"exp_avg": state["exp_avg"] / (1 - beta1**self.probe_steps),
                   "exp_avg_sq": state["exp_avg_sq"] / (1 - beta2**self.probe_steps)}  # fmt: skip
        return {"entries": entries, "delta": delta.detach(), "moments": moments, "snr": snr,
                "loss_change_mean": mean, "loss_change_std": std, "score": score}  # fmt: skip

    # Warm -> Hot -------------------------------------------------------------------------------------

    def _commit(self, trainer: L.Trainer, pl_module: L.LightningModule, graph: Any, optimizer: Any,
                probes: list[dict], step: int) -> int:  # fmt: skip
        """Commit the best probes within the rules; return how many entries joined (at the end of ``values``)."""
        operator = graph.operator
        limit, scale = pl_module.hparams.complexity_limit, pl_module.hparams.barrier_scale
        per_object: dict[int, int] = {}
        used = self._object_use(graph, operator.indices.cpu())
        active = self._object_use(graph, operator.indices.cpu(), operator.values.detach().abs() > self.eps)
        complexity = pl_module.complexity
        chosen, covered = [], set()
        for probe in sorted(probes, key=lambda p: -p["score"]):
            entries = probe["entries"]
            where = graph.coordinates(entries.cpu())
            obj = int(where["target"][0] * graph.n_nodes + where["source"][0])
            reads = (obj, int(where["target_dim"][0]))  # the same read at another lag overlaps this one
            size = entries.shape[1]
            if probe["score"] <= 0 or per_object.get(obj, 0) >= self.commits_per_object or reads in covered:
                continue
            if used[obj] + size > self._budget(graph) or not admissible(complexity, size, limit):
                continue
            if self.active_budget is not None and active[obj] + size > self.active_budget:
                continue
            per_object[obj] = per_object.get(obj, 0) + 1
            covered.add(reads)
            used[obj] += size
            active[obj] += size
            chosen.append((probe, obj, complexity))
            complexity += size
        if not chosen:
            return 0
        old = operator.values
        source = operator.grow(torch.cat([p["entries"] for p, _, _ in chosen], 1),
                               torch.cat([p["delta"] for p, _, _ in chosen]))  # fmt: skip
        fresh = {key: torch.cat([p["moments"][key] for p, _, _ in chosen]) for key in ("exp_avg", "exp_avg_sq")}
        follow_parameter(optimizer, old, operator.values, source, fresh)
        self._recalibrate(pl_module, operator)
        for probe, obj, before in chosen:
            size = probe["entries"].shape[1]
            self.counters["commits"] += 1
            self.emit(trainer, GrowthReceipt(
                stage_id=STAGE, step=step, action="commit", object=_object_name(obj, graph.n_nodes),
                region=_region_name(graph, probe["entries"].cpu()), entries=size, complexity_before=before,
                complexity_after=before + size, gamma_after=gamma(before + size, limit, scale),
                evidence={"snr": probe["snr"], "loss_change_mean": probe["loss_change_mean"],
                          "loss_change_std": probe["loss_change_std"], "score": probe["score"]},
            ))  # fmt: skip
        return sum(p["entries"].shape[1] for p, _, _ in chosen)

    # Prune -------------------------------------------------------------------------------------------

    def _prox_l1(self, pl_module: L.LightningModule, threshold: float) -> None:
        values = pl_module.growable.operator.values
        with torch.no_grad():
            values.copy_(_soft_threshold(values, threshold))

    def _prune(self, trainer: L.Trainer, pl_module: L.LightningModule, graph: Any, optimizer: Any,
               step: int, protected: int = 0) -> None:  # fmt: skip
        """Prune within the budgets; the last ``protected`` entries (committed this cycle) are left alone."""
        operator = graph.operator
        values = operator.values.detach()
        drop = torch.zeros(operator.nnz, dtype=torch.bool)
        candidate = torch.ones(operator.nnz, dtype=torch.bool)
        candidate[operator.nnz - protected :] = False
        if self.l1 > 0:
            drop |= (values.abs() <= self.eps).cpu() & candidate  # consolidated to identity by prox-L1
        state = optimizer.state.get(operator.values, {})
        curvature = state.get("exp_avg_sq", torch.ones_like(values))
        taylor = (0.5 * curvature * values**2).cpu()
        where = graph.coordinates(operator.indices.cpu())
        objects = where["target"] * graph.n_nodes + where["source"]
        if self.active_budget is not None:
            active = (values.abs() > self.eps).cpu() & ~drop
            for obj in torch.unique(objects[active]).tolist():
                members = (active & (objects == obj)).nonzero().squeeze(1)
                excess = members.numel() - self.active_budget
                prunable = members[candidate[members]]
                if excess > 0:
                    drop[prunable[taylor[prunable].argsort()[:excess]]] = True
        if not drop.any():
            return
        limit, scale = pl_module.hparams.complexity_limit, pl_module.hparams.barrier_scale
        complexity = pl_module.complexity
        for obj in torch.unique(objects[drop]).tolist():
            members = drop & (objects == obj)
            self.counters["prunes"] += 1
            self.emit(trainer, GrowthReceipt(
                stage_id=STAGE, step=step, action="prune", object=_object_name(obj, graph.n_nodes),
                region=_region_name(graph, operator.indices[:, members.to(operator.indices.device)].cpu()),
                entries=int(members.sum()), complexity_before=complexity,
                complexity_after=complexity - int(members.sum()),
                gamma_after=gamma(complexity - int(members.sum()), limit, scale),
                evidence={"taylor_score": float(taylor[members].sum()),
                          "abs_value_max": float(values.cpu()[members].abs().max())},
            ))  # fmt: skip
            complexity -= int(members.sum())
        old = operator.values
        source = operator.drop(drop.nonzero().squeeze(1))
        follow_parameter(optimizer, old, operator.values, source)
        self._recalibrate(pl_module, operator)

    def _recalibrate(self, pl_module: L.LightningModule, operator: Any) -> None:
        if pl_module.hparams.get("path", "auto") == "auto" and operator.nnz:
            operator.calibrate()

    @override
    def state_dict(self) -> dict[str, Any]:
        return dict(self.counters)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counters.update(state_dict)


def _soft_threshold(values: torch.Tensor, threshold: float) -> torch.Tensor:
    return values.sign() * (values.abs() - threshold).clamp(min=0) if threshold > 0 else values


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}


def _object_name(obj: int, n_nodes: int) -> str:
    target, source = divmod(obj, n_nodes)
    return f"core:{target}" if target == source else f"edge:{source}->{target}"


def _region_name(graph: Any, entries: torch.Tensor) -> str:
    where = graph.coordinates(entries)
    rows = sorted({(int(t), int(d), int(s), int(lag)) for t, d, s, lag in
                   zip(where["target"], where["target_dim"], where["source"], where["lag"], strict=True)})  # fmt: skip
    return ",".join(f"{t}.d{d}<-{s}@lag{lag}" for t, d, s, lag in rows)
