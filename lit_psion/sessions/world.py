"""Seed 000's latent world model and its linear environment.

The environment has a latent state ``z`` (``n_state``) driven by an input ``u`` (``u_dim``):
``z' = A z + B u + noise``. The base environment's ``A`` has spectral norm 0.9. A session's
environment drifts from it by ``mu``: ``A_s = A + mu * D_A`` and ``B_s = B + mu * D_B``, where
``D_A`` and ``D_B`` are fixed random directions of spectral norm 1 (drawn from ``env_seed``), and
``A_s`` is scaled back to spectral radius 0.95 if the drift pushed it past that (so rollouts stay
bounded). ``mu`` is therefore the spectral-norm size of the change to each dynamics matrix.

The model predicts ``z'`` from ``z`` and ``u``: ``z' ~ (A_hat + P_A) z + (B_hat + P_B) u``.
``A_hat, B_hat`` are the base weights (pretrained, then frozen); ``P_A, P_B`` are the plastic
weights a session owns, zero at the start. Its recurrent state, for ``state_norm_max``, is the
free-running rollout of its own predictions over a buffer.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_psion.sessions.settings import ENV_MODES, WorldConfig

__all__ = ["ENV_MODES", "Environment", "WorldConfig", "WorldModel"]


def _unit_spectral(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / torch.linalg.matrix_norm(matrix, ord=2)


def _cap_radius(matrix: torch.Tensor, radius: float) -> torch.Tensor:
    current = torch.linalg.eigvals(matrix).abs().max()
    return matrix * (radius / current) if current > radius else matrix


class Environment:
    """A linear environment: the base one (``mu`` 0) or a session's drift of it."""

    def __init__(self, config: WorldConfig, mu: float = 0.0) -> None:
        generator = torch.Generator().manual_seed(config.env_seed)
        n, m = config.n_state, config.u_dim
        self.A = _unit_spectral(torch.randn(n, n, generator=generator)) * 0.9  # spectral norm 0.9
        self.B = torch.randn(n, m, generator=generator) / m**0.5
        drift = torch.Generator().manual_seed(config.env_seed + 1)
        if mu:
            self.A = _cap_radius(self.A + mu * _unit_spectral(torch.randn(n, n, generator=drift)), 0.95)
            self.B = self.B + mu * _unit_spectral(torch.randn(n, m, generator=drift))
        self.config, self.mu = config, mu

    def rollout(self, batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` (batch, length + 1, n_state) and ``u`` (batch, length, u_dim) from random starts and inputs."""
        z = [torch.randn(batch, self.config.n_state, generator=generator)]
        u = torch.randn(batch, length, self.config.u_dim, generator=generator)
        for t in range(length):
            noise = self.config.noise * torch.randn(batch, self.config.n_state, generator=generator)
            z.append(z[-1] @ self.A.T + u[:, t] @ self.B.T + noise)
        return torch.stack(z, dim=1), u

    def stream(self, steps: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One online trajectory: ``z`` (steps + 1, n_state) and ``u`` (steps, u_dim)."""
        z, u = self.rollout(1, steps, generator)
        return z[0], u[0]


class WorldModel(torch.nn.Module):
    """Predicts ``z'`` from ``(z, u)`` with frozen base weights plus plastic corrections."""

    def __init__(self, config: WorldConfig) -> None:
        super().__init__()
        n, m = config.n_state, config.u_dim
        self.config = config
        self.A_hat = torch.nn.Parameter(torch.zeros(n, n))
        self.B_hat = torch.nn.Parameter(torch.zeros(n, m))
        self.P_A = torch.nn.Parameter(torch.zeros(n, n))
        self.P_B = torch.nn.Parameter(torch.zeros(n, m))

    def base_parameters(self) -> list[torch.nn.Parameter]:
        return [self.A_hat, self.B_hat]

    def plastic_parameters(self) -> list[torch.nn.Parameter]:
        return [self.P_A, self.P_B]

    def forward(self, z: torch.Tensor, u: torch.Tensor, plastic: bool = True) -> torch.Tensor:
        A, B = (self.A_hat + self.P_A, self.B_hat + self.P_B) if plastic else (self.A_hat, self.B_hat)
        return z @ A.T + u @ B.T

    def loss(self, z: torch.Tensor, u: torch.Tensor, plastic: bool = True) -> torch.Tensor:
        """MSE of one-step predictions along ``z`` (…, T + 1, n) given ``u`` (…, T, m)."""
        return torch.nn.functional.mse_loss(self(z[..., :-1, :], u, plastic), z[..., 1:, :])

    @torch.no_grad()
    def free_run_norm(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Largest state norm of the model's own rollout from ``z[0]`` under inputs ``u`` (T, m)."""
        state, largest = z[0], torch.linalg.vector_norm(z[0])
        for t in range(u.shape[0]):
            state = self(state, u[t])
            largest = torch.maximum(largest, torch.linalg.vector_norm(state))
        return largest

    def plastic_state(self) -> dict[str, torch.Tensor]:
        return {"P_A": self.P_A.detach().clone(), "P_B": self.P_B.detach().clone()}

    def load_plastic_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.P_A.copy_(state["P_A"])
            self.P_B.copy_(state["P_B"])
