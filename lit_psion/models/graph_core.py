"""``GraphCore``: one-step prediction of a dynamical system with a :class:`SuperGraph` (seed 002).

The system's state (dim ``n_nodes * node_dim``) is split into nodes (node ``i`` holds dims
``i * node_dim`` to ``(i + 1) * node_dim``). Each sample is a window of states; every position is
predicted from the history before it in one batched step (teacher forcing), so a training step is
one sparse product per hierarchy level.

The loss is the relativistic barrier's ``L_total = L_task * gamma(C)`` with ``L_task`` the one-step
MSE and ``C`` the structural complexity: the Hot entries of the level-0 operator. ``C`` changes only
when :class:`lit_psion.callbacks.GrowthPlanner` commits or prunes, which it does only while ``C``
stays below ``complexity_limit``, so ``gamma`` stays finite and the loss prices complexity.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from lit_psion.core import sha256_json
from lit_psion.core.errors import CheckpointError, ConfigError
from lit_psion.nn.barrier import gamma
from lit_psion.nn.delta_log import DeltaStateLog
from lit_psion.nn.graph import Graph, SuperGraph
from lit_psion.nn.optim import finite_steps, warmup_cosine
from lit_psion.nn.sparse import SparseMaskedLinear


class GraphCore(L.LightningModule):
    """A recursive sparse graph trained on known dynamics, grown by evidence.

    Args:
        n_nodes: Graph nodes at level 0.
        node_dim: State dims per node (``n_nodes * node_dim`` must equal the data's state dim).
        max_history_length: States each node remembers (temporal edges reach lags below this).
        levels: Hierarchy levels, 1 to ``ceil(log2(n_nodes))``.
        initial: The level-0 structure at the start: ``empty`` (nothing Hot; grow it with a
            GrowthPlanner), ``cores`` (each node's own lag-0 block) or ``random`` (``initial_nnz``
            seeded random entries: the static sparse baseline).
        initial_nnz: Entries of the ``random`` structure.
        mask_seed: Seed of the ``random`` structure.
        complexity_limit: The barrier's limit on Hot level-0 entries (complexity never reaches it).
        barrier_scale: The barrier's ``scale``.
        lr: Adam's peak learning rate; it decays on a cosine to ``lr * min_lr_ratio`` at ``decay_steps``
            (default: the trainer's ``max_steps``), so the final fit is precise.
        min_lr_ratio, decay_steps: The schedule.
        path: ``auto`` (each operator measures its sparse and dense paths at fit start and takes the
            faster), ``sparse`` or ``dense``.
    """

    def __init__(self, n_nodes: int = 8, node_dim: int = 2, max_history_length: int = 2, levels: int = 2,
                 initial: Literal["empty", "cores", "random"] = "empty", initial_nnz: int = 0, mask_seed: int = 0,
                 complexity_limit: float = 128.0, barrier_scale: float = 1.0, lr: float = 1e-2,
                 min_lr_ratio: float = 0.01, decay_steps: int | None = None,
                 path: Literal["auto", "sparse", "dense"] = "auto") -> None:  # fmt: skip
        super().__init__()
        if initial not in ("empty", "cores", "random"):
            raise ConfigError(f"initial must be empty, cores or random, got {initial!r}")
        if path not in ("auto", "sparse", "dense"):
            raise ConfigError(f"path must be auto, sparse or dense, got {path!r}")
        if complexity_limit <= 0 or barrier_scale <= 0:
            raise ConfigError(f"complexity_limit and barrier_scale must be > 0, got {complexity_limit!r} and "
                              f"{barrier_scale!r}")  # fmt: skip
        if initial == "random" and initial_nnz < 1:
            raise ConfigError(f"initial: random needs initial_nnz >= 1 (the static structure's size), "
                              f"got {initial_nnz!r}")  # fmt: skip
        self.save_hyperparameters()
        entries = None
        if initial == "random":
            entries = random_entries(n_nodes * node_dim, max_history_length * n_nodes * node_dim, initial_nnz,
                                     mask_seed)  # fmt: skip
        self.graph = SuperGraph(n_nodes, node_dim, max_history_length=max_history_length, levels=levels,
                                cores=initial == "cores", entries=entries)  # fmt: skip
        if self.complexity >= complexity_limit:
            raise ConfigError(f"the initial structure has {self.complexity} entries, at or above complexity_limit "
                              f"{complexity_limit}: raise the limit or start smaller")  # fmt: skip
        if path != "auto":
            for operator in self.operators():
                operator.path = path
        self.val_mse = MeanMetric()

    @property
    def growable(self) -> Graph:
        """The level-0 graph, whose operator growth edits."""
        return self.graph.level0

    @property
    def complexity(self) -> int:
        """C: the Hot entries of the level-0 operator."""
        return self.growable.operator.nnz

    @property
    def gamma(self) -> float:
        return gamma(self.complexity, self.hparams.complexity_limit, self.hparams.barrier_scale)

    @property
    def model_signature(self) -> str:
        """sha256 of the graph's shape (the structure itself travels in the checkpoint)."""
        shape = ("n_nodes", "node_dim", "max_history_length", "levels")
        return sha256_json({"family": "GraphCore", **{key: self.hparams[key] for key in shape}})

    def operators(self) -> list[SparseMaskedLinear]:
        return [module for module in self.modules() if isinstance(module, SparseMaskedLinear)]

    def histories(self, inputs: torch.Tensor) -> torch.Tensor:
        """Windows (B, W, state) -> every position's history (B * W, nodes, history, node_dim); the
        history before the window's first state repeats that state."""
        batch, window, dim = inputs.shape
        n, d, h = self.hparams.n_nodes, self.hparams.node_dim, self.hparams.max_history_length
        self._check_state_dim(dim)
        states = inputs.view(batch, window, n, d)
        positions = torch.arange(window, device=inputs.device)
        lagged = [states[:, (positions - lag).clamp(min=0)] for lag in range(h)]
        return torch.stack(lagged, dim=3).flatten(0, 1)

    def _check_state_dim(self, dim: int) -> None:
        n, d = self.hparams.n_nodes, self.hparams.node_dim
        if dim != n * d:
            raise ConfigError(f"the data's state has {dim} dims but n_nodes * node_dim = {n} * {d}: set them to "
                              f"match (e.g. oscillators: n_nodes = n_bodies, node_dim = 2)")  # fmt: skip

    def setup(self, stage: str) -> None:
        dim = getattr(self.trainer.datamodule, "state_dim", None)  # refuse a mismatch before any work starts
        if dim is not None:
            self._check_state_dim(dim)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """One-step predictions (B, W, state) for every position of the windows."""
        history = self.histories(inputs)
        return self.graph.propose(history).view_as(inputs)

    def task_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L_task: the one-step MSE."""
        return F.mse_loss(self(batch["inputs"]), batch["targets"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        mse, barrier = self.task_loss(batch), self.gamma
        self.log("train/mse", mse, prog_bar=True)
        self.log("train/gamma", barrier)
        self.log("train/complexity", float(self.complexity))
        return mse * barrier

    def transaction_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.task_loss(batch) * self.gamma

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_mse.update(self.task_loss(batch), weight=batch["targets"].numel())
        self.log("val/loss", self.val_mse, prog_bar=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("test/loss", self.task_loss(batch))

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["inputs"])

    @torch.no_grad()
    def rollout(self, state: torch.Tensor, steps: int, log: DeltaStateLog | None = None) -> torch.Tensor:
        """Free-running prediction from ``state`` (B, state dim): (B, steps, state dim). With ``log``,
        every step's state is recorded as a delta (reconstructible exactly)."""
        n, d = self.hparams.n_nodes, self.hparams.node_dim
        states = self.graph(state.view(-1, n, d), steps).reshape(*state.shape[:-1], steps, -1)
        if log is not None:
            for t in range(steps):
                log.record(t + 1, states[:, t])
        return states

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        decay_steps = self.hparams.decay_steps or finite_steps(self.trainer.estimated_stepping_batches)
        factor = warmup_cosine(0, decay_steps, self.hparams.min_lr_ratio)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_fit_start(self) -> None:
        if self.hparams.path == "auto":
            for operator in self.operators():
                if not operator.calibrated:
                    operator.calibrate()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the structure is in the state dict (indices buffers); the chosen paths travel with it
        operators = ((name, m) for name, m in self.named_modules() if isinstance(m, SparseMaskedLinear))
        checkpoint["graph_paths"] = {name: operator.path for name, operator in operators}
        checkpoint["model_signature"] = self.model_signature

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Give every operator the checkpoint's structure before its values load (growth changed the shapes)."""
        saved = checkpoint.get("model_signature")
        if saved is not None and saved != self.model_signature:
            raise CheckpointError(f"checkpoint was written by a GraphCore of another shape (model signature "
                                  f"{saved[:12]}, this model {self.model_signature[:12]}): load it with the "
                                  f"config of the run that wrote it")  # fmt: skip
        state = checkpoint.get("state_dict", {})
        paths = checkpoint.get("graph_paths", {}) if self.hparams.path == "auto" else {}  # a pinned path wins
        for name, module in self.named_modules():
            if not isinstance(module, SparseMaskedLinear):
                continue
            indices = state.get(f"{name}.indices")
            if indices is None or indices.ndim != 2 or indices.shape[0] != 2:
                raise CheckpointError(f"checkpoint has no structure for {name!r}: it is not a GraphCore checkpoint "
                                      f"of this shape")  # fmt: skip
            if indices.numel() and (indices[0].max() >= module.out_features or indices[1].max() >= module.in_features):
                raise CheckpointError(f"checkpoint structure of {name!r} falls outside this model's "
                                      f"({module.out_features}, {module.in_features}) operator")  # fmt: skip
            module.set_structure(indices.to(module.indices), module.values.new_zeros(indices.shape[1]))
            if name in paths:
                module.path, module.calibrated = paths[name], True


def random_entries(out_features: int, in_features: int, count: int, seed: int) -> torch.Tensor:
    """``count`` distinct seeded random operator entries (2, count)."""
    if not 0 <= count <= out_features * in_features:
        raise ConfigError(f"initial_nnz must be between 0 and {out_features * in_features}, got {count!r}")
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randperm(out_features * in_features, generator=generator)[:count].sort().values
    return torch.stack([flat // in_features, flat % in_features])
