"""Trajectories of known dynamical systems (seed 002's "next directions"), replay-safe.

Systems, integrated with fixed-step RK4 from seeded initial states:

- ``oscillators``: ``n_bodies`` unit masses on a ring of springs (coupling ``k``), state
  ``(x_0, v_0, x_1, v_1, ...)``: body ``i`` is the pair at ``2i`` (one graph node of dim 2);
- ``lorenz``: the Lorenz system (sigma 10, rho 28, beta 8/3), scaled by 1/20;
- ``linear``: ``z' = A z`` with a seeded stable ``A`` (eigenvalues with negative real parts).

A sample is a window of ``window + 1`` consecutive states; the task is one-step prediction
(``inputs`` -> ``targets``). Trajectories are split by trajectory (train / val never share one).
The generator settings form the manifest; the sample order replays exactly from a cursor.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch.utils.data import Dataset

from lit_psion.core.contracts import DataFacts
from lit_psion.core.errors import DataConfigError
from lit_psion.core.manifest import RecordManifest
from lit_psion.datamodules.base import ReplayDataModule, Split, positive_integers

System = Literal["oscillators", "lorenz", "linear"]


def _oscillators(state: torch.Tensor, k: float) -> torch.Tensor:
    n = state.shape[-1] // 2
    x, v = state[..., :n], state[..., n:]
    force = k * (x.roll(1, -1) + x.roll(-1, -1) - 2 * x) - 0.1 * x
    return torch.cat([v, force], dim=-1)


def _lorenz(state: torch.Tensor) -> torch.Tensor:
    x, y, z = (state[..., i] * 20 for i in range(3))
    return torch.stack([10 * (y - x), x * (28 - z) - y, x * y - 8 / 3 * z], dim=-1) / 20


def simulate(system: System, n: int, steps: int, dt: float, seed: int, n_bodies: int = 4) -> torch.Tensor:
    """``n`` trajectories of ``steps + 1`` states (n, steps + 1, dim), float64 integration, float32 result."""
    generator = torch.Generator().manual_seed(seed)
    if system == "oscillators":
        dim = 2 * n_bodies
        field = lambda s: _oscillators(s, 1.0)  # noqa: E731
    elif system == "lorenz":
        dim = 3
        field = _lorenz
    elif system == "linear":
        dim = n_bodies
        raw = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        matrix = (raw - raw.T) / 2 - 0.05 * torch.eye(dim, dtype=torch.float64)  # rotation with slow decay
        field = lambda s: s @ matrix.T  # noqa: E731
    else:
        raise DataConfigError(f"system must be oscillators, lorenz or linear, got {system!r}")
    state = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    if system == "lorenz":
        state = state * 0.5 + torch.tensor([0.0, 0.0, 1.2], dtype=torch.float64)
    states = [state]
    for _ in range(steps):
        k1 = field(state)
        k2 = field(state + dt / 2 * k1)
        k3 = field(state + dt / 2 * k2)
        k4 = field(state + dt * k3)
        state = state + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        states.append(state)
    trajectories = torch.stack(states, dim=1).float()
    if system == "oscillators":  # (x..., v...) -> (x_0, v_0, x_1, v_1, ...): each body's state together
        trajectories = trajectories.view(n, steps + 1, 2, n_bodies).transpose(2, 3).reshape(n, steps + 1, dim)
    return trajectories


class Windows(Dataset):
    """Windows of ``window + 1`` consecutive states; sample ``i`` is trajectory ``i // per_trajectory``."""

    def __init__(self, trajectories: torch.Tensor, window: int) -> None:
        self.trajectories, self.window = trajectories, window
        self.per_trajectory = trajectories.shape[1] - window

    def __len__(self) -> int:
        return self.trajectories.shape[0] * self.per_trajectory

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        sample_ids = torch.tensor(indices, dtype=torch.long)
        rows, starts = sample_ids // self.per_trajectory, sample_ids % self.per_trajectory
        offsets = starts[:, None] + torch.arange(self.window + 1)
        windows = self.trajectories[rows[:, None], offsets]  # (B, window + 1, dim)
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:], "sample_ids": sample_ids}


class DynamicsDataModule(ReplayDataModule):
    """One-step prediction windows over simulated trajectories of a known system.

    Args:
        system: ``oscillators``, ``lorenz`` or ``linear``.
        n_train, n_val: Trajectories per split.
        n_test: Trajectories of a test split (default 0: none, and ``test`` is refused).
        steps: States per trajectory (after the initial one).
        dt: Integration step.
        window: States per sample (the model sees ``window`` and predicts the next of each).
        n_bodies: Oscillators on the ring (or the linear system's dimension).
        batch_size: Samples per training batch.
        seed: Seed of the initial states (and the linear system) and of the sample order.
        num_workers: DataLoader worker processes.
    """

    data_name = "dynamics data"
    more_data_hint = "raise --data.n_train or --data.steps, or lower --data.batch_size"
    test_split_hint = "it has n_test 0; train a run with --data.n_test 8 to simulate held-out test trajectories"

    def __init__(self, system: System = "oscillators", n_train: int = 64, n_val: int = 8, steps: int = 200,
                 dt: float = 0.05, window: int = 16, n_bodies: int = 4, batch_size: int = 32,
                 seed: int = 1337, num_workers: int = 0, n_test: int = 0) -> None:  # fmt: skip
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.settings = {"system": system, "n_train": n_train, "n_val": n_val, "steps": steps, "dt": dt,
                         "window": window, "n_bodies": n_bodies, "seed": seed, "format": 2}  # fmt: skip
        if n_test:  # recorded only when asked for: data without a test split keeps its manifest digest
            self.settings["n_test"] = n_test
        self.window = window
        self._splits: dict[str, torch.Tensor] = {}
        problems = positive_integers(n_train=n_train, n_val=n_val, window=window, n_bodies=n_bodies)
        if not isinstance(n_test, int) or isinstance(n_test, bool) or n_test < 0:
            problems.append(f"n_test must be an integer >= 0 (0: no test split), got {n_test!r}")
        if system not in get_args(System):
            problems.append(f"system must be oscillators, lorenz or linear, got {system!r}")
        if steps <= window:
            problems.append(f"steps ({steps}) must exceed window ({window})")
        if not (isinstance(dt, int | float) and not isinstance(dt, bool) and 0 < dt <= 1):
            problems.append(f"dt must be a time step in (0, 1], got {dt!r} (a negative one integrates backwards)")
        self._refuse_bad_settings(*problems)

    @property
    def state_dim(self) -> int:
        """The size of one state (simulates the data on first use)."""
        self.prepare()
        return self._splits["train"].shape[-1]

    def data_facts(self) -> DataFacts:
        return DataFacts(state_dim=self.state_dim, window=self.window)

    def _prepare(self) -> RecordManifest:
        s = self.settings
        n_train, n_val, n_test = s["n_train"], s["n_val"], s.get("n_test", 0)
        both = simulate(s["system"], n_train + n_val, s["steps"], s["dt"], s["seed"], s["n_bodies"])
        self._splits = {"train": both[:n_train], "val": both[n_train:]}  # the same with or without a test split
        if n_test:  # the same system (same seed), further initial states: a larger draw's tail
            every = simulate(s["system"], n_train + n_val + n_test, s["steps"], s["dt"], s["seed"], s["n_bodies"])
            self._splits["test"] = every[n_train + n_val :]
        return RecordManifest(dict(self.settings))

    def trajectories(self, split: Split) -> torch.Tensor:
        """The split's whole trajectories (n, steps + 1, state dim): what a multi-step rollout is scored on."""
        self.prepare()
        if split not in self._splits:
            raise DataConfigError(f"{split!r} has no trajectories here; {self.test_split_hint}")
        return self._splits[split]

    def _dataset(self, split: Split) -> Windows:
        return Windows(self._splits[split], self.window)

    def has_test_split(self) -> bool:
        return bool(self.settings.get("n_test"))

    def sample_batch(self, key: int, batch_size: int | None = None) -> dict[str, Any]:
        """A training batch drawn by ``key`` alone (not from the training order, which it leaves untouched):
        what a growth probe evaluates on. The same key gives the same batch on every run."""
        self.prepare()
        dataset = self._dataset("train")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + key)
        picks = torch.randint(len(dataset), (batch_size or self.batch_size,), generator=generator)
        return dataset[picks.tolist()]
