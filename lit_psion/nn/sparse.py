"""``SparseMaskedLinear`` (seed 002): a linear layer whose weight exists only at chosen (row, col) entries.

The weight is COO: fixed ``indices`` (2, nnz) and trainable ``values`` (nnz,), so the mask is truly
sparse and gradients reach only the values. It starts as the identity (1 on the diagonal entries
the mask holds, 0 elsewhere) for square and non-square shapes alike, so an untrained layer passes
its input through (truncated or zero-padded to ``out_features``); ``init="zero"`` starts every
value at 0 instead (for a residual update, where zero is the identity).

Growth edits the structure: :meth:`grow` adds entries (Cold -> Hot) and :meth:`drop` removes them
(Hot -> Cold), each returning, for every new position, where its value came from (an old
position, or -1 for a new entry) so an optimizer's state can follow (:func:`follow_parameter`).
A ``shadow`` (indices, delta) adds a probe's delta on entries outside the mask without touching it
(seed 002's shadow-delta trick: backprop reaches only the delta).

Two ways to compute the same product: the sparse path (``torch.sparse.mm``, cost ~ nnz) and the
dense path (scatter the values into a dense matrix, cost ~ in * out). The dense crossover policy
measures both on the current device for this layer's shape and density (``alpha`` seconds per
non-zero, ``beta`` seconds per dense entry) and uses the faster, switching only when the other
path is faster by more than ``hysteresis``. A path set with :meth:`pin` is never measured again
(the two paths differ in the last bits, so bitwise comparisons pin one).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from lit_psion.core.errors import ConfigError


def random_mask(out_features: int, in_features: int, density: float, seed: int = 0) -> torch.Tensor:
    """COO indices (2, nnz) of a seeded random mask of ``density`` that always holds the diagonal."""
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {density!r}")
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(out_features, in_features, generator=generator) < density
    diagonal = torch.arange(min(out_features, in_features))
    mask[diagonal, diagonal] = True
    return mask.nonzero().T.contiguous()


class SparseMaskedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, indices: torch.Tensor, hysteresis: float = 0.1,
                 init: str = "identity") -> None:  # fmt: skip
        super().__init__()
        if init not in ("identity", "zero"):
            raise ConfigError(f"init must be identity or zero, got {init!r}")
        if indices.ndim != 2 or indices.shape[0] != 2:
            raise ConfigError(f"indices must have shape (2, nnz), got {tuple(indices.shape)}")
        if indices.numel() and (indices[0].max() >= out_features or indices[1].max() >= in_features):
            raise ConfigError(f"indices fall outside a ({out_features}, {in_features}) weight")
        self.in_features, self.out_features, self.hysteresis = in_features, out_features, hysteresis
        self.register_buffer("indices", indices.long())
        identity = (indices[0] == indices[1]).float()
        self.values = nn.Parameter(identity if init == "identity" else torch.zeros_like(identity))
        self.shadow: tuple[torch.Tensor, torch.Tensor] | None = None
        self.path = "sparse"
        self.pinned = False
        self.calibrated = False
        self.costs: dict[str, float] = {}

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def density(self) -> float:
        return self.nnz / (self.in_features * self.out_features)

    def weight(self) -> torch.Tensor:
        """The dense weight (out, in): zero outside the mask."""
        dense = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype, device=self.values.device)
        return dense.index_put((self.indices[0], self.indices[1]), self.values)

    def forward_sparse(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.sparse_coo_tensor(self.indices, self.values, (self.out_features, self.in_features),
                                         check_invariants=False)  # fmt: skip
        flat = x.reshape(-1, self.in_features)
        return torch.sparse.mm(weight, flat.T).T.reshape(*x.shape[:-1], self.out_features)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight().T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nnz == 0:  # nothing Hot: no product; the (empty) values stay in the graph so backward still runs
            y = x.new_zeros(*x.shape[:-1], self.out_features) + self.values.sum()
        else:
            y = self.forward_sparse(x) if self.path == "sparse" else self.forward_dense(x)
        if self.shadow is not None:  # K_eff = (indices, values) + (shadow indices, delta)
            rows, cols = self.shadow[0]
            y = y.index_add(-1, rows, x[..., cols] * self.shadow[1])
        return y

    def grow(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Add entries (2, k) with their starting values; return each new position's source (-1: new)."""
        source = torch.cat([torch.arange(self.nnz), torch.full((indices.shape[1],), -1)])
        self.set_structure(torch.cat([self.indices, indices.to(self.indices)], 1),
                          torch.cat([self.values.detach(), values.detach().to(self.values)]))  # fmt: skip
        return source

    def drop(self, positions: torch.Tensor) -> torch.Tensor:
        """Remove the entries at ``positions`` (into ``values``); return each kept position's source."""
        keep = torch.ones(self.nnz, dtype=torch.bool)
        keep[positions] = False
        source = keep.nonzero().squeeze(1)
        self.set_structure(self.indices[:, source], self.values.detach()[source])
        return source

    def set_structure(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the structure and values (a new ``values`` Parameter: an optimizer must follow it)."""
        self.indices = indices.contiguous()
        self.values = nn.Parameter(values.clone())

    def pin(self, path: str) -> None:
        """Use ``path`` (``sparse`` or ``dense``) from now on; :meth:`recalibrate` leaves it alone."""
        if path not in ("sparse", "dense"):
            raise ConfigError(f"a pinned path is sparse or dense, got {path!r}")
        self.path, self.pinned = path, True

    def recalibrate(self) -> None:
        """After a structural change: measure both paths again, unless the path is pinned or nothing is Hot."""
        if not self.pinned and self.nnz:
            self.calibrate()

    def calibrate(self, batch_size: int = 64, repeats: int = 11) -> str:
        """Measure both paths (forward + backward) here and take the faster one.

        The first calibration picks the faster path outright; later ones (after the mask grew or was
        pruned) switch only when the other path is faster by more than ``hysteresis``.
        """
        generator = torch.Generator().manual_seed(0)  # never the global RNG: a resumed run must not drift
        x = torch.randn(batch_size, self.in_features, generator=generator).to(self.values.device)
        times: dict[str, list[float]] = {"sparse": [], "dense": []}
        for _ in range(repeats + 1):  # alternating, so drifts hit both; the first round warms up
            for path, run in (("sparse", self.forward_sparse), ("dense", self.forward_dense)):
                start = time.perf_counter()
                run(x).sum().backward()
                times[path].append(time.perf_counter() - start)
        for path, measured in times.items():
            self.costs[path] = sorted(measured[1:])[len(measured[1:]) // 2]
        self.values.grad = None
        self.costs["alpha"] = self.costs["sparse"] / max(1, self.nnz)
        self.costs["beta"] = self.costs["dense"] / (self.in_features * self.out_features)
        other = "dense" if self.path == "sparse" else "sparse"
        margin = self.hysteresis if self.calibrated else 0.0
        if self.costs[other] < self.costs[self.path] * (1 - margin):
            self.path = other
        self.calibrated = True
        return self.path


def follow_parameter(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter, source: torch.Tensor,
                     fresh: dict[str, torch.Tensor] | None = None) -> None:  # fmt: skip
    """Point ``optimizer`` at ``new`` in place of ``old``, carrying per-entry state (Adam's moments)
    from ``old[source]``; entries whose source is -1 take their state from ``fresh`` (in order),
    else zero."""
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if not state:
        return
    known = source >= 0
    moved = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape == old.shape:
            carried = torch.zeros(new.shape, dtype=value.dtype, device=value.device)
            carried[known] = value[source[known]]
            if fresh is not None and key in fresh:
                carried[~known] = fresh[key].to(carried)
            value = carried
        moved[key] = value
    optimizer.state[new] = moved
