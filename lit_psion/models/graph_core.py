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

import dataclasses
import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from lit_psion.core.contracts import DataFacts, ReplayData, model_signature
from lit_psion.core.errors import CheckpointError, ConfigError
from lit_psion.core.step_logs import keep_step_logs, log_kept_step_logs, writes_the_step_row
from lit_psion.models.base import LitModule
from lit_psion.nn.barrier import Barrier
from lit_psion.nn.delta_log import DeltaStateLog
from lit_psion.nn.graph import Graph, SuperGraph, max_levels
from lit_psion.nn.optim import LARGEST_RATE, a_rate, finite_steps, warmup_cosine
from lit_psion.nn.sizes import size_problem
from lit_psion.nn.sparse import SparseMaskedLinear

SCALES = (1e-6, 1e6)
"""The range of ``barrier_scale``: ``gamma`` runs from ``1 / scale`` to ``1000 / scale`` and multiplies the loss."""


@dataclasses.dataclass(kw_only=True)
class GraphCoreConfig:
    """Shape, starting structure, barrier, schedule and product path of a :class:`GraphCore`."""

    n_nodes: int = 8
    """Graph nodes at level 0."""
    node_dim: int = 2
    """State dims per node (``n_nodes * node_dim`` must equal the data's state dim)."""
    max_history_length: int = 2
    """States each node remembers (temporal edges reach lags below this)."""
    levels: int = 2
    """Hierarchy levels, 1 to ``ceil(log2(n_nodes))``."""
    initial: Literal["empty", "cores", "random"] = "empty"
    """The level-0 structure at the start: ``empty`` (nothing Hot; grow it with a GrowthPlanner), ``cores``
    (each node's own lag-0 block) or ``random`` (``initial_nnz`` seeded random entries: the static baseline)."""
    initial_nnz: int = 0
    """Entries of the ``random`` structure."""
    mask_seed: int = 0
    """Seed of the ``random`` structure."""
    complexity_limit: float = 128.0
    """The barrier's limit on Hot level-0 entries (complexity never reaches it), a finite number > 0."""
    barrier_scale: float = 1.0
    """The barrier's ``scale``, 1e-6 to 1e6 (``gamma(0) = 1 / scale``)."""
    lr: float = 1e-2
    """Adam's peak learning rate; it decays on a cosine to ``lr * min_lr_ratio`` at ``decay_steps``."""
    min_lr_ratio: float = 0.01
    """Where the cosine ends, as a fraction of ``lr`` (a small final rate makes the final fit precise)."""
    decay_steps: int | None = None
    """Steps of the cosine (``None``: the trainer's ``max_steps``)."""
    state_function: Literal["linear", "mlp"] = "linear"
    """Each level-0 node's state function: ``linear`` (identity plus its sparse operator rows) or ``mlp``
    (plus a small MLP over the node's gathered inputs, zero at the start: products of state components,
    as Lorenz needs; :class:`lit_psion.nn.graph.NodeStateFunction`)."""
    state_hidden: int = 16
    """Hidden units of each node's MLP (``state_function: mlp``)."""
    path: Literal["auto", "sparse", "dense"] = "auto"
    """``auto`` (each operator measures its sparse and dense paths at fit start and after each structural
    change, and takes the faster), or a pinned ``sparse`` or ``dense`` (for bitwise comparisons)."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_nodes", "node_dim", "max_history_length", "levels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems and self.levels > max_levels(self.n_nodes):
            problems.append(f"levels must be between 1 and ceil(log2({self.n_nodes})) = {max_levels(self.n_nodes)}, "
                            f"got {self.levels!r}")  # fmt: skip
        if self.initial not in ("empty", "cores", "random"):
            problems.append(f"initial must be empty, cores or random, got {self.initial!r}")
        if self.initial == "random" and self.initial_nnz < 1:
            problems.append(f"initial: random needs initial_nnz >= 1 (the static structure's size), "
                            f"got {self.initial_nnz!r}")  # fmt: skip
        elif self.initial == "random" and not problems and self.initial_nnz > self.operator_entries:
            problems.append(f"initial_nnz must be at most the level-0 operator's {self.operator_entries} entries, "
                            f"got {self.initial_nnz!r}")  # fmt: skip
        if self.state_function not in ("linear", "mlp"):
            problems.append(f"state_function must be linear or mlp, got {self.state_function!r}")
        if not isinstance(self.state_hidden, int) or isinstance(self.state_hidden, bool) or self.state_hidden < 1:
            problems.append(f"state_hidden must be a positive integer, got {self.state_hidden!r}")
        if self.path not in ("auto", "sparse", "dense"):
            problems.append(f"path must be auto, sparse or dense, got {self.path!r}")
        barrier_problems = []  # each refused value named, not only the first
        if not (_number(self.complexity_limit) and self.complexity_limit > 0):
            barrier_problems.append(f"complexity_limit must be a finite number > 0, got {self.complexity_limit!r}")
        if not (_number(self.barrier_scale) and SCALES[0] <= self.barrier_scale <= SCALES[1]):
            barrier_problems.append(f"barrier_scale must be between {SCALES[0]:g} and {SCALES[1]:g} (gamma(0) = 1 / "
                                    "scale multiplies the loss: outside, it is 0 or infinite in float32 or drowns in "
                                    f"Adam's eps), got {self.barrier_scale!r}")  # fmt: skip
        problems += barrier_problems
        if not problems and self.initial_complexity >= self.complexity_limit:
            problems.append(f"the initial structure has {self.initial_complexity} entries, at or above "
                            f"complexity_limit {self.complexity_limit!r}: "
                            "raise the limit or start smaller")  # fmt: skip
        if not problems and (problem := size_problem("the graph", self.parameter_count, {
                name: getattr(self, name) for name in ("n_nodes", "node_dim", "max_history_length", "state_hidden")})):
            problems.append(problem)
        if not a_rate(self.lr) or not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"lr must be a finite number > 0 and at most {LARGEST_RATE:.3g}, and "
                            f"min_lr_ratio in [0, 1], got {self.lr!r} and {self.min_lr_ratio!r}")  # fmt: skip
        if self.decay_steps is not None and self.decay_steps < 1:
            problems.append(f"decay_steps must be >= 1 or null (the trainer's max_steps), got {self.decay_steps!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def parameter_count(self) -> int:
        """The level-0 operator's dense weight (the dense path builds it) and its node MLPs, from the config."""
        history_width = self.max_history_length * self.state_dim
        return self.state_dim * history_width + self.n_nodes * self.hidden_units * (history_width + self.node_dim + 1)

    @property
    def state_dim(self) -> int:
        """The data's state dim this graph splits into nodes."""
        return self.n_nodes * self.node_dim

    @property
    def operator_entries(self) -> int:
        """Entries the level-0 operator can hold: every state dim reading every state dim at every lag."""
        return self.state_dim * self.max_history_length * self.state_dim

    @property
    def initial_complexity(self) -> int:
        """C at the start: the Hot level-0 entries of the ``initial`` structure."""
        return {"empty": 0, "cores": self.n_nodes * self.node_dim**2, "random": self.initial_nnz}[self.initial]

    @property
    def shape(self) -> dict[str, int | str]:
        """What decides the model's parameters (its signature; the structure itself is in the checkpoint). A
        linear graph's signature is what it was before state functions could be nonlinear."""
        shape = {"n_nodes": self.n_nodes, "node_dim": self.node_dim, "max_history_length": self.max_history_length,
                 "levels": self.levels}  # fmt: skip
        if self.state_function == "mlp":
            shape.update(state_function="mlp", state_hidden=self.state_hidden)
        return shape

    @property
    def hidden_units(self) -> int:
        """Hidden units per node of the level-0 state functions (0: linear)."""
        return self.state_hidden if self.state_function == "mlp" else 0


class GraphCore(LitModule):
    """A recursive sparse graph trained on known dynamics, grown by evidence.

    Args:
        config: Shape, starting structure, barrier, schedule and product path.
        data_facts: The data's state dim (``python -m lit_psion`` links it from the DataModule); a
            mismatch with ``n_nodes * node_dim`` is refused here.
    """

    stage: ClassVar[str] = "pretrain"
    lr_flag: ClassVar[str] = "--model.init_args.config.lr"
    """The command-line flag of the learning rate, for advice (a divergence names it)."""
    signed_settings: ClassVar[tuple[str, ...]] = tuple(f"config.{name}" for name in (
        "n_nodes", "node_dim", "max_history_length", "levels", "state_function", "state_hidden"))
    """The settings :attr:`model_signature` is made of (:attr:`GraphCoreConfig.shape`)."""

    def __init__(self, config: GraphCoreConfig | None = None, data_facts: DataFacts | None = None) -> None:
        super().__init__()
        config = config or GraphCoreConfig()
        self.config = config
        if data_facts is not None:
            self._check_facts(data_facts, window=False)  # at setup, for a fit
        self.barrier = Barrier(limit=config.complexity_limit, scale=config.barrier_scale)
        entries = None
        if config.initial == "random":
            entries = random_entries(config.state_dim, config.max_history_length * config.state_dim,
                                     config.initial_nnz, config.mask_seed)  # fmt: skip
        self.graph = SuperGraph(config.n_nodes, config.node_dim, max_history_length=config.max_history_length,
                                levels=config.levels, cores=config.initial == "cores", entries=entries,
                                state_hidden=config.hidden_units)  # fmt: skip
        if config.path != "auto":
            for operator in self.operators():
                operator.pin(config.path)
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
        """gamma(C): the barrier's factor on the task loss at the current complexity."""
        return self.barrier.gamma(self.complexity)

    @property
    def model_signature(self) -> str:
        """sha256 of the graph's shape (the structure itself travels in the checkpoint)."""
        return model_signature("GraphCore", **self.config.shape)

    def operators(self) -> list[SparseMaskedLinear]:
        return [module for module in self.modules() if isinstance(module, SparseMaskedLinear)]

    def histories(self, inputs: torch.Tensor) -> torch.Tensor:
        """Windows (B, W, state) -> every position's history (B * W, nodes, history, node_dim); the
        history before the window's first state repeats that state."""
        batch, window, dim = inputs.shape
        n, d, h = self.config.n_nodes, self.config.node_dim, self.config.max_history_length
        self._check_state_dim(dim)
        states = inputs.view(batch, window, n, d)
        positions = torch.arange(window, device=inputs.device)
        lagged = [states[:, (positions - lag).clamp(min=0)] for lag in range(h)]
        return torch.stack(lagged, dim=3).flatten(0, 1)

    def _check_facts(self, facts: DataFacts, window: bool) -> None:
        """The data's state, and (``window``: for a fit, not a recorded run read back) its window."""
        if facts.state_dim is not None:
            self._check_state_dim(facts.state_dim)
        if window and facts.window is not None and (history := self.config.max_history_length) > facts.window:
            raise ConfigError(f"max_history_length ({history}) exceeds the data's window ({facts.window}): lags "
                              f"{facts.window}..{history - 1} would never see a real state, only the window's "
                              f"first; set --model.init_args.config.max_history_length <= {facts.window} or "
                              "--data.window >= it")  # fmt: skip

    def _check_state_dim(self, dim: int) -> None:
        n, d = self.config.n_nodes, self.config.node_dim
        if dim != n * d:
            raise ConfigError(f"the data's state has {dim} dims but n_nodes * node_dim = {n} * {d}: set them to "
                              f"match (e.g. oscillators: n_nodes = n_bodies, node_dim = 2)")  # fmt: skip

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule  # a Python-API fit has no data_facts: refuse a mismatch before any work
        if isinstance(data, ReplayData):
            self._check_facts(data.data_facts(), window=stage == "fit")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """One-step predictions (B, W, state) for every position of the windows."""
        history = self.histories(inputs)
        return self.graph.propose(history).view_as(inputs)

    def task_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L_task: the one-step MSE."""
        return F.mse_loss(self(batch["inputs"]), batch["targets"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        mse, barrier = self.task_loss(batch), self.gamma
        keep_step_logs(self, **{"train/mse": mse, "train/gamma": barrier, "train/complexity": float(self.complexity)})
        return mse * barrier

    flushes_step_logs: ClassVar[bool] = True
    """Its ``on_train_batch_end`` writes the step's kept scalars as one row (lit_psion.core.step_logs): callbacks
    and strategies keep theirs for it. A subclass overriding ``on_train_batch_end`` calls ``super()``'s."""

    @writes_the_step_row
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        log_kept_step_logs(self)  # on the steps that write a row, and the last step's row at max_steps

    def transaction_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.task_loss(batch) * self.gamma

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_mse.update(self.task_loss(batch), weight=batch["targets"].numel())
        self.log("val/loss", self.val_mse, prog_bar=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # weighted by the batch's targets, as val/loss is (and no Lightning warning that it guessed the batch size)
        self.log("test/loss", self.task_loss(batch), batch_size=batch["targets"].numel())

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["inputs"])

    @torch.no_grad()
    def rollout(self, state: torch.Tensor, steps: int, log: DeltaStateLog | None = None) -> torch.Tensor:
        """Free-running prediction from ``state`` (B, state dim): (B, steps, state dim). With ``log``,
        every step's state is recorded as a delta (reconstructible exactly)."""
        n, d = self.config.n_nodes, self.config.node_dim
        states = self.graph(state.view(-1, n, d), steps).reshape(*state.shape[:-1], steps, -1)
        if log is not None:
            for t in range(steps):
                log.record(t + 1, states[:, t])
        return states

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.config.lr)
        decay_steps = self.config.decay_steps or finite_steps(self.trainer.estimated_stepping_batches)
        factor = warmup_cosine(0, decay_steps, self.config.min_lr_ratio)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_fit_start(self) -> None:
        for operator in self.operators():
            if not operator.pinned and not operator.calibrated:
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
        paths = checkpoint.get("graph_paths", {})
        check_structure_tensors(self, state, self._checkpoint_name())
        for name, module in self.named_modules():
            if not isinstance(module, SparseMaskedLinear):
                continue
            indices = state[f"{name}.indices"]
            module.set_structure(indices.to(module.indices), module.values.new_zeros(indices.shape[1]))
            if name in paths and not module.pinned:  # a pinned path wins over the saved one
                module.path, module.calibrated = paths[name], True
        if self.complexity >= self.barrier.limit:  # gamma would be infinite: the loss no longer prices complexity
            raise ConfigError(f"the checkpoint's structure has {self.complexity} entries, at or above complexity_limit "
                              f"{self.barrier.limit!r}: raise --model.init_args.config.complexity_limit above "
                              f"{self.complexity} to continue it")  # fmt: skip

    def _checkpoint_name(self) -> str:
        """The checkpoint being loaded, as the trainer names it (a bare ``on_load_checkpoint``: "checkpoint")."""
        path = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
        return f"checkpoint {str(path)!r}" if path else "checkpoint"


def check_structure_tensors(model: GraphCore, state: dict[str, Any], checkpoint: str) -> None:
    """Refuse (CheckpointError) a state dict whose structure tensors this model cannot hold, before any of it loads:
    every key of the model present and of its shape (the operators' by their own indices), each operator's
    ``indices`` integer (2, nnz) in bounds with no repeated entry and ``values`` nnz finite floats, the fixed
    operators (all but level 0's, which growth edits) and pooling as the model builds them, and every
    ``update_frequency`` an integer >= 1 per node."""
    own = model.state_dict()

    def refuse(key: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{checkpoint} is not a GraphCore checkpoint this model can load: tensor {key!r} "
                               f"{problem}; load a checkpoint its run wrote (not edited)")  # fmt: skip

    if missing := sorted(set(own) - set(state)):
        raise refuse(missing[0], "is missing")
    if unexpected := sorted(set(state) - set(own)):
        raise refuse(unexpected[0], "is not in this model")
    if not all(isinstance(state[key], torch.Tensor) for key in own):
        raise refuse(next(key for key in own if not isinstance(state[key], torch.Tensor)), "is not a tensor")
    operators = {name: m for name, m in model.named_modules() if isinstance(m, SparseMaskedLinear)}
    for name, operator in operators.items():
        key, indices, values = f"{name}.indices", state[f"{name}.indices"], state[f"{name}.values"]
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise refuse(key, f"has dtype {indices.dtype}, not an integer type")
        if indices.ndim != 2 or indices.shape[0] != 2:
            raise refuse(key, f"has shape {tuple(indices.shape)}, not (2, nnz)")
        if indices.numel() and (indices.min() < 0 or indices[0].max() >= operator.out_features
                                or indices[1].max() >= operator.in_features):  # fmt: skip
            raise refuse(key, f"holds entries outside [0, {operator.out_features}) x [0, {operator.in_features}) "
                              f"(min {int(indices.min())}, rows up to {int(indices[0].max())}, columns up to "
                              f"{int(indices[1].max())})")  # fmt: skip
        if torch.unique(indices.long(), dim=1).shape[1] != indices.shape[1]:
            raise refuse(key, "holds the same (row, col) entry more than once")
        if name != "graph.graphs.0.operator" and not torch.equal(indices.long().cpu(), operator.indices.cpu()):
            raise refuse(key, "differs from the fixed structure this model builds (only level 0's grows)")
        nnz = indices.shape[1]
        if not values.dtype.is_floating_point or values.shape != (nnz,) or not torch.isfinite(values).all():
            raise refuse(f"{name}.values", f"must be {nnz} finite floats (one per entry of {key}), got "
                                           f"{values.dtype} of shape {tuple(values.shape)}")  # fmt: skip
    structure = {f"{name}.{part}" for name in operators for part in ("indices", "values")}
    for key, tensor in own.items():
        held = state[key]
        if key in structure:
            continue
        if held.shape != tensor.shape or held.dtype.is_floating_point != tensor.dtype.is_floating_point:
            raise refuse(key, f"is {held.dtype} of shape {tuple(held.shape)}, this model's {tensor.dtype} of shape "
                              f"{tuple(tensor.shape)}")  # fmt: skip
        if key.rsplit(".", 1)[-1].startswith("pool_") and not torch.equal(held.cpu().to(tensor.dtype), tensor.cpu()):
            raise refuse(key, "differs from the pooling this model's hierarchy builds")
        if key.endswith("update_frequency") and held.numel() and held.min() < 1:
            raise refuse(key, f"holds {int(held.min())}: every node's update frequency is an integer >= 1")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def random_entries(out_features: int, in_features: int, count: int, seed: int) -> torch.Tensor:
    """``count`` distinct seeded random operator entries (2, count)."""
    if not 0 <= count <= out_features * in_features:
        raise ConfigError(f"initial_nnz must be between 0 and {out_features * in_features}, got {count!r}")
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randperm(out_features * in_features, generator=generator)[:count].sort().values
    return torch.stack([flat // in_features, flat % in_features])
