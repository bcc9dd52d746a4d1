"""Seed 002 building blocks: SparseMaskedLinear, the relativistic barrier, the delta-state log."""

from __future__ import annotations

import pytest
import torch

from lit_psion.core.errors import ConfigError
from lit_psion.nn.barrier import admissible, gamma, total_loss
from lit_psion.nn.delta_log import DeltaStateLog
from lit_psion.nn.sparse import SparseMaskedLinear, random_mask


@pytest.mark.parametrize(("n_in", "n_out"), [(8, 8), (8, 5), (5, 8)])
def test_identity_init_passes_state_through(n_in: int, n_out: int) -> None:
    layer = SparseMaskedLinear(n_in, n_out, random_mask(n_out, n_in, 0.3))
    x = torch.randn(3, n_in)
    expected = torch.zeros(3, n_out)
    k = min(n_in, n_out)
    expected[:, :k] = x[:, :k]
    for path in ("sparse", "dense"):
        layer.path = path
        assert torch.equal(layer(x), expected), path


def test_both_paths_agree_and_gradients_reach_only_the_values() -> None:
    torch.manual_seed(0)
    layer = SparseMaskedLinear(16, 12, random_mask(12, 16, 0.2, seed=3))
    torch.nn.init.normal_(layer.values)
    x = torch.randn(4, 16)
    outputs, grads = [], []
    for path in ("sparse", "dense"):
        layer.path = path
        layer.values.grad = None
        y = layer(x)
        (y**2).sum().backward()
        outputs.append(y.detach())
        grads.append(layer.values.grad.clone())
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5) and torch.allclose(grads[0], grads[1], atol=1e-4)
    assert [name for name, _ in layer.named_parameters()] == ["values"]
    assert layer.values.numel() == layer.nnz < 16 * 12  # truly sparse storage
    masked_out = torch.ones(12, 16, dtype=torch.bool)
    masked_out[layer.indices[0], layer.indices[1]] = False
    assert (layer.weight()[masked_out] == 0).all()


def test_calibration_keeps_the_faster_path_with_hysteresis() -> None:
    layer = SparseMaskedLinear(64, 64, random_mask(64, 64, 0.5))
    chosen = layer.calibrate(batch_size=32, repeats=3)
    assert chosen in ("sparse", "dense") and {"sparse", "dense", "alpha", "beta"} <= layer.costs.keys()
    assert layer.calibrated
    layer.hysteresis = 1.0  # a recalibration switches only for a 100% gain, which never happens
    layer.path = "sparse" if chosen == "dense" else "dense"
    kept = layer.path
    assert layer.calibrate(batch_size=8, repeats=1) == kept


def test_the_barrier_keeps_complexity_below_the_limit() -> None:
    assert gamma(0.0, 100.0) == 1.0
    values = [gamma(c, 100.0) for c in (0, 50, 90, 99, 99.99)]
    assert values == sorted(values) and all(v < float("inf") for v in values)
    assert total_loss(2.0, 90.0, 100.0) == pytest.approx(2.0 * gamma(90.0, 100.0))
    complexity = 0.0
    for added in [7.0] * 40:  # a planner that asks for more than the limit allows
        if admissible(complexity, added, 100.0):
            complexity += added
        assert complexity < 100.0
    with pytest.raises(ConfigError):
        gamma(1.0, 0.0)


def test_delta_log_reconstruction_is_exact() -> None:
    generator = torch.Generator().manual_seed(0)
    state = torch.randn(6, 7, generator=generator)
    log = DeltaStateLog(state, capacity=10)
    history = {0: state.clone()}
    for step in range(1, 40):
        state = state.clone()
        changed = torch.rand(6, 7, generator=generator) < 0.1
        state[changed] = torch.randn(int(changed.sum()), generator=generator)
        log.record(step, state)
        history[step] = state.clone()
    assert torch.equal(log.reconstruct(), history[39])
    for step in range(log.base_step, 40):
        assert torch.equal(log.reconstruct(step), history[step]), step
    with pytest.raises(ConfigError, match="older than"):
        log.reconstruct(0)
    with pytest.raises(ConfigError, match="must increase"):
        log.record(39, state)


def test_an_untrained_graph_passes_state_through_exactly() -> None:
    from lit_psion.nn.graph import Graph

    graph = Graph(5, 3, edges=[(0, 1, 0), (2, 1, 2), (4, 0, 1)], max_history_length=3)
    state = torch.randn(2, 5, 3)
    states = graph(state, steps=6)
    assert torch.equal(states, state[:, None].expand(-1, 6, -1, -1))


def test_graph_steps_gather_then_commit_and_respect_update_frequency() -> None:
    from lit_psion.nn.graph import Graph

    graph = Graph(3, 2, edges=[(0, 1, 0), (1, 2, 0)], update_frequency=[1, 1, 2])
    graph.set_block(0, 1, 0, torch.eye(2))
    graph.set_block(1, 2, 0, torch.eye(2))
    state = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    first = graph.step(graph.initial_history(state), step=1)[:, :, 0]
    # gather uses pre-step states: node 1 receives node 0's 1.0, node 2 receives node 1's old 0.0
    assert torch.equal(first[0, 1], torch.tensor([1.0, 0.0])) and torch.equal(first[0, 2], torch.tensor([0.0, 0.0]))
    permuted = Graph(3, 2, edges=[(2, 1, 0), (1, 0, 0)], update_frequency=[2, 1, 1])  # the same graph, nodes reversed
    permuted.set_block(2, 1, 0, torch.eye(2))
    permuted.set_block(1, 0, 0, torch.eye(2))
    again = permuted.step(permuted.initial_history(state.flip(1)), step=1)[:, :, 0]
    assert torch.equal(again.flip(1), first)  # no dependence on node order
    second = graph.step(graph.step(graph.initial_history(state), 1), 2)[:, :, 0]
    assert torch.equal(second[0, 2], torch.tensor([1.0, 0.0]))  # node 2 updates on even steps only
    with pytest.raises(ConfigError, match="outside"):
        Graph(2, 2, edges=[(0, 5, 0)])
