"""Graph-core structure (seed 002, Archive 00/01/03): nodes with state history, sparse temporal edges,
recursive graph modules and the supergraph that steps them.

``Graph`` holds ``n_nodes`` nodes, each with a state of ``dim`` and a history of its last
``max_history_length`` states, all in one tensor (batch, nodes, history, dim). Every node's state
function and every edge live in one :class:`SparseMaskedLinear` *operator* over the flattened history
(input index ``(lag * n_nodes + source) * dim + e``, output index ``target * dim + d``): a node
proposes ``state + operator(history)``, so with the operator's values at zero (their initial value)
the state function is the identity and an untrained graph passes every state through exactly. An
edge ``(source, target, lag)`` is a ``dim x dim`` block of operator entries reading the source's
state ``lag`` steps ago; a node's own block ``(n, n, lag)`` is its state function's learnable part.
The hot path is one sparse product per step for all nodes and edges: no per-node Python loop.

With ``state_hidden > 0`` each node's state function also has a nonlinear part (seed 002's state
functions and activations), a :class:`NodeStateFunction`: a small MLP per node over the node's
*gathered inputs*, its own current state plus every history entry its operator rows read, added to
the proposal. Its output layer starts at zero, so the untrained graph is still exactly the identity.

``step`` has two phases: every node *gathers* (proposes from the states as they were before the
step), then every node *commits* (nodes whose ``update_frequency`` does not divide the step keep
their state), so a result never depends on node order.

``GraphModule`` is the recursive container: a level-0 module is one node; a level-``l`` module
clusters at least two level-``l-1`` modules, so there are at most ``ceil(log2(n_level0))`` levels.
``SuperGraph`` gives each level above 0 its own ``Graph`` over that level's modules (a module's state
is the mean of its leaves' states) and zero-initialised *sup edges* carrying each module's proposal
back down to its leaves; all levels gather, then level 0 commits. Growth (:mod:`lit_psion.nn.growth`)
edits the level-0 operator's structure.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lit_psion.core.errors import ConfigError
from lit_psion.nn.sparse import SparseMaskedLinear


def commit(history: torch.Tensor, proposed: torch.Tensor, step: int | torch.Tensor,
           frequency: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Phase two: nodes due at ``step`` take their proposal; return the new history (latest first).

    ``step`` is one int, or one per batch row (teacher-forced windows step every position at once).
    """
    current = history[:, :, 0]
    step = torch.as_tensor(step, device=history.device).reshape(-1, 1)  # (1 or B, 1)
    active = (step % frequency[None, :] == 0)[:, :, None]
    new = torch.where(active, proposed, current)
    return torch.cat([new[:, :, None], history[:, :, :-1]], dim=2)


def unroll(step: Any, history: torch.Tensor, steps: int) -> torch.Tensor:
    """Steps 1 .. ``steps`` of ``step(history, t)``; the states (batch, steps, nodes, dim)."""
    states = []
    for t in range(1, steps + 1):
        history = step(history, t)
        states.append(history[:, :, 0])
    return torch.stack(states, dim=1)


class NodeStateFunction(nn.Module):
    """The nonlinear part of every node's state function: one MLP per node, all nodes batched.

    Node ``n`` reads its *gathered inputs* from the flattened history (B, in_features): its own lag-0
    state always, plus every column its rows of ``operator`` read (the reads growth gave it). Hidden
    units ``silu(W1[n] @ gathered + b1[n])`` (``hidden`` per node) feed an output layer ``W2[n]`` that
    starts at zero, so the state function starts as the identity. ``W1`` starts random on the node's own
    state and zero on every other column, so a read that growth opens later joins without a jump. An MLP
    over two inputs or more represents their products (Lorenz's ``x * y``), which no sparse linear map can.

    Args:
        n_nodes, dim, history: The graph's shape.
        hidden: Hidden units per node (>= 1).
    """

    def __init__(self, n_nodes: int, dim: int, history: int, hidden: int) -> None:
        super().__init__()
        if not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"a node state function needs hidden >= 1, got {hidden!r}")
        columns = torch.arange(history * n_nodes * dim)
        own = columns[None, :] // dim == torch.arange(n_nodes)[:, None]  # (nodes, in): node n's lag-0 state
        self.dim = dim
        self.register_buffer("own", own, persistent=False)  # derived from the shape: not checkpointed
        self.input_weight = nn.Parameter(torch.randn(n_nodes, hidden, columns.numel()) / math.sqrt(dim) * own[:, None])
        self.input_bias = nn.Parameter(torch.randn(n_nodes, hidden))
        self.output_weight = nn.Parameter(torch.zeros(n_nodes, dim, hidden))
        self.output_bias = nn.Parameter(torch.zeros(n_nodes, dim))

    def reads(self, operator: SparseMaskedLinear) -> torch.Tensor:
        """Which history columns each node gathers (n_nodes, in_features): its own state and its operator reads."""
        mask = self.own.clone()
        rows, cols = operator.indices
        mask[rows // self.dim, cols] = True
        return mask

    def forward(self, flat: torch.Tensor, operator: SparseMaskedLinear) -> torch.Tensor:
        """Every node's nonlinear update (B, n_nodes, dim) from the flattened history ``flat`` (B, in_features)."""
        weight = self.input_weight * self.reads(operator)[:, None]  # (nodes, hidden, in): unread columns get no grad
        hidden = torch.nn.functional.silu(torch.einsum("bi,nki->bnk", flat, weight) + self.input_bias)  # (B, n, hidden)
        return torch.einsum("bnk,ndk->bnd", hidden, self.output_weight) + self.output_bias


class Graph(nn.Module):
    """Nodes and sparse temporal edges over one operator (see the module docstring).

    Args:
        n_nodes, dim: Nodes and the size of each node's state.
        edges: ``(source, target, lag)`` blocks present from the start (zero-valued).
        max_history_length: States each node remembers (lags ``0 .. max_history_length - 1``).
        update_frequency: Per node: it commits on steps divisible by this (default every step).
        cores: Start each node's own lag-0 block in the structure (zero-valued).
        entries: Further individual operator entries (2, k) present from the start (zero-valued).
        state_hidden: Hidden units of each node's :class:`NodeStateFunction` (0: linear state functions).
    """

    def __init__(self, n_nodes: int, dim: int, edges: list[tuple[int, int, int]] = (), max_history_length: int = 1,
                 update_frequency: list[int] | None = None, cores: bool = False,
                 entries: torch.Tensor | None = None, state_hidden: int = 0) -> None:  # fmt: skip
        super().__init__()
        if n_nodes < 1 or dim < 1 or max_history_length < 1:
            raise ConfigError(f"n_nodes, dim and max_history_length must be >= 1, got {n_nodes}, {dim}, "
                              f"{max_history_length}")  # fmt: skip
        for source, target, lag in edges:
            if not (0 <= source < n_nodes and 0 <= target < n_nodes and 0 <= lag < max_history_length):
                raise ConfigError(f"edge ({source}, {target}, lag {lag}) is outside {n_nodes} nodes and "
                                  f"{max_history_length} history steps")  # fmt: skip
        frequency = update_frequency or [1] * n_nodes
        if len(frequency) != n_nodes or min(frequency) < 1:
            raise ConfigError(f"update_frequency needs {n_nodes} values >= 1, got {frequency!r}")
        self.n_nodes, self.dim, self.history = n_nodes, dim, max_history_length
        blocks = [(n, n, 0) for n in range(n_nodes)] if cores else []
        indices = [self.block_entries(*block) for block in [*blocks, *edges]]
        if entries is not None:
            indices.append(entries.long())
        indices = torch.cat(indices, 1) if indices else torch.zeros(2, 0, dtype=torch.long)
        indices = torch.unique(indices, dim=1)  # sorted, no duplicates
        self.operator = SparseMaskedLinear(self.in_features, self.out_features, indices, init="zero")
        self.register_buffer("update_frequency", torch.tensor(frequency))
        self.state_function = None
        if state_hidden:
            self.state_function = NodeStateFunction(n_nodes, dim, max_history_length, state_hidden)

    @property
    def in_features(self) -> int:
        return self.history * self.n_nodes * self.dim

    @property
    def out_features(self) -> int:
        return self.n_nodes * self.dim

    def block_entries(self, source: int, target: int, lag: int) -> torch.Tensor:
        """The operator entries (2, dim * dim) of the edge ``source -> target`` at ``lag``."""
        d = torch.arange(self.dim)
        rows = (target * self.dim + d).repeat_interleave(self.dim)
        cols = ((lag * self.n_nodes + source) * self.dim + d).repeat(self.dim)
        return torch.stack([rows, cols])

    def coordinates(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Operator entries (2, k) as (target, target_dim, source, lag, source_dim)."""
        rows, cols = indices
        return {"target": rows // self.dim, "target_dim": rows % self.dim, "source": (cols // self.dim) % self.n_nodes,
                "lag": cols // (self.dim * self.n_nodes), "source_dim": cols % self.dim}  # fmt: skip

    def set_block(self, source: int, target: int, lag: int, matrix: torch.Tensor) -> None:
        """Set the values of a block already in the structure (``matrix[d, e]``: target dim d from source dim e)."""
        want = self.block_entries(source, target, lag)
        held = self.operator.indices
        match = ((held[:, :, None] == want[:, None, :]).all(0)).nonzero()
        if match.shape[0] != want.shape[1]:
            raise ConfigError(f"edge ({source}, {target}, lag {lag}) is not in the structure")
        with torch.no_grad():
            self.operator.values[match[:, 0]] = matrix.reshape(-1)[match[:, 1]].to(self.operator.values)

    def flatten(self, history: torch.Tensor) -> torch.Tensor:
        """(batch, nodes, history, dim) -> (batch, history * nodes * dim), the operator's input order."""
        return history.transpose(1, 2).reshape(history.shape[0], -1)

    def propose(self, history: torch.Tensor) -> torch.Tensor:
        """Phase one: every node's proposed next state (batch, nodes, dim)."""
        flat = self.flatten(history)
        update = self.operator(flat).view(history.shape[0], self.n_nodes, self.dim)
        if self.state_function is not None:
            update = update + self.state_function(flat, self.operator)
        return history[:, :, 0] + update

    def initial_history(self, state: torch.Tensor) -> torch.Tensor:
        """A history (batch, nodes, history, dim) whose every slot is ``state`` (batch, nodes, dim)."""
        return state[:, :, None, :].expand(-1, -1, self.history, -1).clone()

    def step(self, history: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
        """One two-phase step; returns the new history (latest state at index 0)."""
        return commit(history, self.propose(history), step, self.update_frequency)

    def forward(self, state: torch.Tensor, steps: int) -> torch.Tensor:
        """Run ``steps`` steps from ``state`` (batch, nodes, dim); return the states (batch, steps, nodes, dim)."""
        return unroll(self.step, self.initial_history(state), steps)


class GraphModule:
    """A node of the module hierarchy: a level-0 module is one graph node; a higher one clusters modules."""

    def __init__(self, level_id: int, index: int, sub_modules: list[GraphModule] = ()) -> None:
        self.level_id, self.index, self.sub_modules = level_id, index, list(sub_modules)

    @property
    def is_leaf(self) -> bool:
        return self.level_id == 0

    def leaves(self) -> list[int]:
        """The level-0 nodes under this module."""
        return [self.index] if self.is_leaf else [leaf for sub in self.sub_modules for leaf in sub.leaves()]

    def __repr__(self) -> str:
        return f"GraphModule(level={self.level_id}, index={self.index}, leaves={self.leaves()})"


def max_levels(n_level0: int) -> int:
    """Levels the hierarchy may have with clusters of at least two: ``ceil(log2(n_level0))`` (at least 1)."""
    return max(1, math.ceil(math.log2(n_level0)))


def build_hierarchy(n_nodes: int, levels: int) -> list[list[GraphModule]]:
    """Tiers of modules, level 0 first; each higher module clusters consecutive pairs (a leftover joins
    the last pair)."""
    if not 1 <= levels <= max_levels(n_nodes):
        raise ConfigError(f"levels must be between 1 and ceil(log2({n_nodes})) = {max_levels(n_nodes)}, "
                          f"got {levels!r}")  # fmt: skip
    tiers = [[GraphModule(0, i) for i in range(n_nodes)]]
    for level in range(1, levels):
        below = tiers[-1]
        groups = [below[i : i + 2] for i in range(0, len(below) - len(below) % 2, 2)]
        if len(below) % 2:
            groups[-1].append(below[-1])
        tiers.append([GraphModule(level, i, group) for i, group in enumerate(groups)])
    return tiers


class SuperGraph(nn.Module):
    """The recursive graph: a level-0 ``Graph`` plus one ``Graph`` per higher level, stepped together.

    Args:
        n_nodes, dim, edges, max_history_length, update_frequency, cores, entries: The level-0 graph.
        levels: Hierarchy levels, 1 (level 0 alone) to ``ceil(log2(n_nodes))``.
        state_hidden: Level 0's node state functions: hidden units per node, 0 for linear (higher levels are linear).
    """

    def __init__(self, n_nodes: int, dim: int, edges: list[tuple[int, int, int]] = (), max_history_length: int = 1,
                 levels: int = 1, update_frequency: list[int] | None = None, cores: bool = False,
                 entries: torch.Tensor | None = None, state_hidden: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.tiers = build_hierarchy(n_nodes, levels)
        self.graphs = nn.ModuleList([Graph(n_nodes, dim, edges, max_history_length, update_frequency, cores, entries,
                                           state_hidden)])  # fmt: skip
        self.sup_edges = nn.ModuleList()
        for level, tier in enumerate(self.tiers[1:], start=1):
            self.graphs.append(Graph(len(tier), dim, max_history_length=max_history_length, cores=True))
            pool = torch.zeros(len(tier), n_nodes)
            down = []
            for module in tier:
                leaves = module.leaves()
                pool[module.index, leaves] = 1.0 / len(leaves)
                d = torch.arange(dim)
                for leaf in leaves:  # leaf <- its ancestor: a dim x dim block, zero at the start
                    rows, cols = (leaf * dim + d).repeat_interleave(dim), (module.index * dim + d).repeat(dim)
                    down.append(torch.stack([rows, cols]))
            self.register_buffer(f"pool_{level}", pool)
            self.sup_edges.append(SparseMaskedLinear(len(tier) * dim, n_nodes * dim, torch.cat(down, 1), init="zero"))

    @property
    def level0(self) -> Graph:
        return self.graphs[0]

    def propose(self, history: torch.Tensor) -> torch.Tensor:
        """Phase one at every level, from the states before the step; the level-0 proposals (batch, nodes, dim)."""
        proposed = self.level0.propose(history)
        for level, (graph, sup) in enumerate(zip(self.graphs[1:], self.sup_edges, strict=True), start=1):
            pooled = torch.einsum("kn,bnhd->bkhd", getattr(self, f"pool_{level}"), history)
            proposed = proposed + sup(graph.propose(pooled).flatten(1)).view_as(proposed)
        return proposed

    def step(self, history: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
        return commit(history, self.propose(history), step, self.level0.update_frequency)

    def forward(self, state: torch.Tensor, steps: int) -> torch.Tensor:
        """As :meth:`Graph.forward`, every level stepping."""
        return unroll(self.step, self.level0.initial_history(state), steps)
