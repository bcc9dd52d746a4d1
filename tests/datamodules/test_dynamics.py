"""Known-system trajectories: deterministic, split by trajectory, right shapes, manifest-pinned."""

from __future__ import annotations

import pytest
import torch

from lit_psion.datamodules import DataManifestMismatch
from lit_psion.datamodules.dynamics import DynamicsDataModule, simulate


@pytest.mark.parametrize("system", ["oscillators", "lorenz", "linear"])
def test_trajectories_are_deterministic_and_finite(system: str) -> None:
    a, b = simulate(system, 3, 50, 0.05, seed=1), simulate(system, 3, 50, 0.05, seed=1)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert not torch.equal(a, simulate(system, 3, 50, 0.05, seed=2))


def test_oscillator_energy_is_nearly_conserved_by_rk4() -> None:
    x = simulate("oscillators", 1, 400, 0.01, seed=0, n_bodies=4)[0].double()
    pos, vel = x[:, 0::2], x[:, 1::2]  # body i is (x_i, v_i) at 2i
    spring = ((pos - pos.roll(1, -1)) ** 2).sum(-1) / 2 + 0.05 * (pos**2).sum(-1)
    energy = (vel**2).sum(-1) / 2 + spring
    assert (energy.max() - energy.min()) / energy.mean() < 1e-3  # the integrator is right


def test_windows_and_splits() -> None:
    data = DynamicsDataModule(n_train=4, n_val=2, steps=40, window=8, batch_size=5)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["inputs"].shape == (5, 8, 8) and torch.equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    train, val = data._splits["train"], data._splits["val"]
    assert not any(torch.equal(t[0], v[0]) for t in train for v in val)  # no trajectory in both splits


def test_whole_trajectories_are_the_splits_windows_come_from() -> None:
    from lit_psion.core.errors import DataConfigError

    data = DynamicsDataModule(system="lorenz", n_train=3, n_val=2, steps=30, window=4)
    val = data.trajectories("val")
    assert val.shape == (2, 31, 3) and torch.equal(val, simulate("lorenz", 5, 30, 0.05, seed=1337)[3:])
    with pytest.raises(DataConfigError, match="'test' has no trajectories"):
        data.trajectories("test")


def test_resuming_against_other_settings_is_refused() -> None:
    saved = DynamicsDataModule(dt=0.05).state_dict()
    with pytest.raises(DataManifestMismatch, match="dt differ"):
        DynamicsDataModule(dt=0.1).load_state_dict(saved)
    DynamicsDataModule(dt=0.05).load_state_dict(saved)
