"""Graph-core building block (seed 002, Archive 00/01): nodes with state history and sparse temporal edges.

``Graph`` holds ``n_nodes`` nodes, each with a state of ``dim`` and a history of the last
``max_history_length`` states, all in one tensor (batch, nodes, history, dim): the hot path has no
per-node Python loop. A node's state function is an identity-initialised affine map; an edge
(source, target, lag) carries a zero-initialised weight from the source's state ``lag`` steps ago.
``step`` has two phases: every node *gathers* its messages from the states as they were before the
step, then every node *commits* its new state (nodes whose ``update_frequency`` does not divide the
step keep theirs). So an untrained graph passes every state through unchanged, and the result never
depends on node order. Recursive modules, the supergraph and growth build on this (issue 7).
"""

from __future__ import annotations

import torch
from torch import nn

from lit_psion.core.errors import ConfigError


class Graph(nn.Module):
    def __init__(self, n_nodes: int, dim: int, edges: list[tuple[int, int, int]], max_history_length: int = 4,
                 update_frequency: list[int] | None = None) -> None:  # fmt: skip
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
        self.state_weight = nn.Parameter(torch.eye(dim).repeat(n_nodes, 1, 1))  # identity init
        self.state_bias = nn.Parameter(torch.zeros(n_nodes, dim))
        edge_index = torch.tensor(edges, dtype=torch.long).reshape(-1, 3)
        self.register_buffer("edge_index", edge_index)
        self.edge_weight = nn.Parameter(torch.zeros(len(edges), dim, dim))  # zero: no influence until trained
        self.register_buffer("update_frequency", torch.tensor(frequency))

    def initial_history(self, state: torch.Tensor) -> torch.Tensor:
        """A history (batch, nodes, history, dim) whose every slot is ``state`` (batch, nodes, dim)."""
        return state[:, :, None, :].expand(-1, -1, self.history, -1).clone()

    def step(self, history: torch.Tensor, step: int) -> torch.Tensor:
        """One two-phase step; returns the new history (latest state at index 0)."""
        current = history[:, :, 0]  # (B, N, D)
        # gather: messages from the states before this step
        source, target, lag = self.edge_index.unbind(-1) if len(self.edge_index) else (None, None, None)
        messages = torch.zeros_like(current)
        if source is not None:
            sent = torch.einsum("bed,eod->beo", history[:, source, lag], self.edge_weight)  # (B, E, D)
            messages = messages.index_add(1, target, sent)
        # commit: every node's new state at once
        proposed = torch.einsum("bnd,nod->bno", current, self.state_weight) + self.state_bias + messages
        active = (step % self.update_frequency == 0)[None, :, None]
        new = torch.where(active, proposed, current)
        return torch.cat([new[:, :, None], history[:, :, :-1]], dim=2)

    def forward(self, state: torch.Tensor, steps: int) -> torch.Tensor:
        """Run ``steps`` steps from ``state`` (batch, nodes, dim); return the states (batch, steps, nodes, dim)."""
        history, states = self.initial_history(state), []
        for t in range(1, steps + 1):
            history = self.step(history, t)
            states.append(history[:, :, 0])
        return torch.stack(states, dim=1)
