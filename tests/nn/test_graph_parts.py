"""Seed 002 building blocks: SparseMaskedLinear, the relativistic barrier, the delta-state log, the graph and
the growth functions (lit_psion.nn.growth)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch

from lit_psion.core.errors import ConfigError
from lit_psion.nn.barrier import Barrier, admissible, gamma, total_loss
from lit_psion.nn.delta_log import DeltaStateLog
from lit_psion.nn.graph import Graph
from lit_psion.nn.growth import GrowthPolicy, Probe, commit, grow_cycle, probe, prox_l1, prune
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


# Nonlinear node state functions (lit_psion.nn.graph.NodeStateFunction) -----------------------------


@pytest.mark.parametrize("levels", [1, 2])
def test_a_nonlinear_state_function_starts_as_the_identity_exactly(levels: int) -> None:
    from lit_psion.nn.graph import SuperGraph

    torch.manual_seed(0)
    graph = SuperGraph(4, 3, edges=[(0, 1, 0), (3, 2, 1)], max_history_length=2, levels=levels, state_hidden=8)
    function = graph.level0.state_function
    assert function is not None and function.input_weight.abs().sum() > 0  # random hidden layer, zero output layer
    state = torch.randn(2, 4, 3)
    assert torch.equal(graph(state, 5), state[:, None].expand(-1, 5, -1, -1))
    assert Graph(4, 3).state_function is None  # linear by default
    with pytest.raises(ConfigError, match="hidden >= 1, got -2"):
        Graph(4, 3, state_hidden=-2)


def _fit_product(state_hidden: int) -> tuple[float, float]:
    """One 2-dim node whose truth is ``(x, y) -> (x, y + 0.5 * x * y)``: the MSE after 300 Adam steps, and the
    best any linear state function can do (least squares on the same data)."""
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(512, 1, 2, generator=generator)
    target = states.clone()
    target[:, 0, 1] += 0.5 * states[:, 0, 0] * states[:, 0, 1]
    torch.manual_seed(0)
    graph = Graph(1, 2, cores=True, state_hidden=state_hidden)
    graph.operator.pin("dense")
    adam = torch.optim.Adam(graph.parameters(), lr=1e-2)
    history = graph.initial_history(states)
    for _ in range(300):
        adam.zero_grad()
        loss = torch.nn.functional.mse_loss(graph.propose(history), target)
        loss.backward()
        adam.step()
    inputs = torch.cat([states[:, 0], torch.ones(512, 1)], 1)  # affine least squares: the linear optimum
    residual = inputs @ torch.linalg.lstsq(inputs, target[:, 0]).solution - target[:, 0]
    with torch.no_grad():
        fitted = float(torch.nn.functional.mse_loss(graph.propose(history), target))
    return fitted, float(residual.pow(2).mean())


def test_a_nonlinear_state_function_fits_a_product_a_linear_one_cannot() -> None:
    linear, optimum = _fit_product(0)
    nonlinear, _ = _fit_product(16)
    assert optimum == pytest.approx(0.1632, abs=1e-4)  # var(0.5 x y) over 2 dims, on this sample
    assert linear >= optimum * 0.999  # no linear map does better than least squares
    assert nonlinear < optimum / 100  # the MLP fits the product (2.7e-4 here)


def test_a_state_function_gathers_what_growth_lets_its_node_read_without_a_jump() -> None:
    torch.manual_seed(0)
    graph = Graph(2, 1, state_hidden=4)
    function = graph.state_function
    with torch.no_grad():
        function.output_weight.normal_()  # as after training: the MLP's output counts
    assert function.reads(graph.operator).tolist() == [[True, False], [False, True]]  # each node its own state
    states = torch.randn(8, 2, 1)
    before = graph.propose(graph.initial_history(states))
    graph.propose(graph.initial_history(states)).sum().backward()
    assert function.input_weight.grad[0, :, 1].abs().sum() == 0  # node 0 does not read node 1 yet
    graph.operator.grow(torch.tensor([[0], [1]]), torch.zeros(1))  # growth: node 0 reads node 1
    assert function.reads(graph.operator).tolist() == [[True, True], [False, True]]
    assert torch.equal(graph.propose(graph.initial_history(states)), before)  # the new read starts at zero weight
    function.input_weight.grad = None
    graph.propose(graph.initial_history(states)).sum().backward()
    assert function.input_weight.grad[0, :, 1].abs().sum() > 0  # and now learns


# Growth (lit_psion.nn.growth) ----------------------------------------------------------------------


def _coupled_pair() -> tuple[Graph, Callable[[torch.Tensor], torch.Tensor], list[torch.Tensor]]:
    """Two 1-dim nodes whose truth is ``x0' = x0, x1' = x1 + 0.5 * x0``: only node 1 reading node 0 helps."""
    graph = Graph(2, 1)

    def task_loss(states: torch.Tensor) -> torch.Tensor:  # states (B, 2, 1)
        target = states + 0.5 * torch.stack([torch.zeros_like(states[:, 0]), states[:, 0]], dim=1)
        return torch.nn.functional.mse_loss(graph.propose(graph.initial_history(states)), target)

    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(32, 2, 1, generator=generator) for _ in range(GrowthPolicy().batches_per_cycle)]
    return graph, task_loss, batches


def _graph_after_one_adam_step(graph: Graph) -> torch.optim.Adam:
    adam = torch.optim.Adam(graph.parameters())
    states = torch.randn(4, graph.n_nodes, graph.dim, generator=torch.Generator().manual_seed(1))
    graph(states, 1).pow(2).sum().backward()
    adam.step()
    return adam


def _region_probe(graph: Graph, target: int, target_dim: int, source: int, lag: int, score: float) -> Probe:
    """A probe record on one region: ``target``'s ``target_dim`` reading ``source`` at ``lag`` (every source dim)."""
    e = torch.arange(graph.dim)
    rows = torch.full((graph.dim,), target * graph.dim + target_dim)
    entries = torch.stack([rows, (lag * graph.n_nodes + source) * graph.dim + e])
    return Probe(entries=entries, delta=torch.full((graph.dim,), score), exp_avg=torch.full((graph.dim,), 0.1),
                 exp_avg_sq=torch.full((graph.dim,), 0.01), snr=2.0, loss_change_mean=-score, loss_change_std=0.0,
                 score=score)  # fmt: skip


def test_a_cycle_grows_only_the_coupling_the_data_has() -> None:
    graph, task_loss, batches = _coupled_pair()
    adam = torch.optim.Adam(graph.parameters(), lr=0.1)
    changes = grow_cycle(graph, task_loss, adam, batches, Barrier(limit=10), GrowthPolicy())
    assert [(c.action, c.object, c.region) for c in changes] == [("commit", "edge:0->1", "1.d0<-0@lag0")]
    assert (changes[0].complexity_before, changes[0].complexity_after) == (0, 1) and changes[0].evidence["score"] > 0
    assert graph.operator.indices.tolist() == [[1], [0]] and 0 < graph.operator.values.item() < 0.5
    assert adam.param_groups[0]["params"] == [graph.operator.values]  # Adam follows the new structure
    assert graph.operator.shadow is None


def test_a_probe_is_frozen_and_records_its_evidence() -> None:
    graph, task_loss, batches = _coupled_pair()
    graph.operator.grow(torch.tensor([[1], [1]]), torch.tensor([0.25]))  # a Hot entry the probe must not move
    policy = GrowthPolicy(probe_steps=3, probe_batches=4)
    helpful = probe(task_loss, graph.operator, torch.tensor([[1], [0]]), batches[:3], batches[3:7], 5.0,
                    Barrier(limit=10), policy)  # fmt: skip
    assert graph.operator.values.tolist() == [0.25] and graph.operator.indices.tolist() == [[1], [1]]
    assert helpful.snr == 5.0 and helpful.loss_change_mean < 0 < helpful.score
    assert helpful.score == pytest.approx(-helpful.loss_change_mean - 0.5 * helpful.loss_change_std)
    assert helpful.delta.shape == helpful.exp_avg.shape == helpful.exp_avg_sq.shape == (1,)
    assert helpful.delta.item() == pytest.approx(3 * policy.probe_lr, rel=0.05)  # 3 Adam steps of about lr each
    assert helpful.exp_avg_sq.item() > 0 and not helpful.delta.requires_grad
    useless = probe(task_loss, graph.operator, torch.tensor([[0], [1]]), batches[:3], batches[3:7], 1.0,
                    Barrier(limit=10), policy)  # fmt: skip
    assert useless.score <= 0  # node 0 is already exact: reading node 1 cannot help it


def test_commits_respect_the_per_object_limit_the_budgets_the_barrier_and_overlapping_lags() -> None:
    def graph_and_probes() -> tuple[Graph, list[Probe]]:
        graph = Graph(2, 2, max_history_length=2)
        probes = [_region_probe(graph, 1, 0, 0, 0, 0.5), _region_probe(graph, 1, 1, 0, 0, 0.4),
                  _region_probe(graph, 1, 1, 0, 1, 0.35),  # a third region of edge 0->1 in one cycle
                  _region_probe(graph, 0, 0, 1, 1, 0.3),
                  _region_probe(graph, 0, 0, 1, 0, 0.25),  # the same read as the one above at another lag
                  _region_probe(graph, 0, 1, 0, 0, -0.1)]  # no gain  # fmt: skip
        return graph, probes

    graph, probes = graph_and_probes()
    adam = _graph_after_one_adam_step(graph)
    changes = commit(graph, adam, probes, Barrier(limit=100), GrowthPolicy())
    assert [c.region for c in changes] == ["1.d0<-0@lag0", "1.d1<-0@lag0", "0.d0<-1@lag1"]
    assert [c.object for c in changes] == ["edge:0->1", "edge:0->1", "edge:1->0"]
    assert [(c.complexity_before, c.complexity_after) for c in changes] == [(0, 2), (2, 4), (4, 6)]
    assert graph.operator.values.tolist() == pytest.approx([0.5, 0.5, 0.4, 0.4, 0.3, 0.3])  # from the probes' deltas
    moments = adam.state[graph.operator.values]  # and on with the probes' Adam moments
    assert torch.equal(moments["exp_avg"], torch.full((6,), 0.1))
    assert torch.equal(moments["exp_avg_sq"], torch.full((6,), 0.01))
    for barrier, policy, committed in [(Barrier(limit=3), GrowthPolicy(), 1),  # 2 + 2 would reach the limit
                                       (Barrier(limit=100), GrowthPolicy(commits_per_object=1), 2),
                                       (Barrier(limit=100), GrowthPolicy(struct_budget=3), 2),
                                       (Barrier(limit=100), GrowthPolicy(active_budget=2), 2)]:  # fmt: skip
        graph, probes = graph_and_probes()
        changes = commit(graph, torch.optim.Adam(graph.parameters()), probes, barrier, policy)
        assert [c.region for c in changes] == ["1.d0<-0@lag0", "0.d0<-1@lag1"][:committed], (barrier, policy)
        assert graph.operator.nnz == 2 * committed


def test_pruning_keeps_each_object_within_its_active_budget_by_taylor_score() -> None:
    graph = Graph(6, 2, max_history_length=2, cores=True)  # 4 Hot entries per core
    adam = _graph_after_one_adam_step(graph)
    operator = graph.operator
    with torch.no_grad():  # core 0: |w| ranks entries 0 > 1 > 2 > 3, the curvature turns the Taylor order around
        operator.values[:4] = torch.tensor([0.4, 0.3, 0.2, 0.1])
        adam.state[operator.values]["exp_avg_sq"][:4] = torch.tensor([0.001, 1.0, 1.0, 100.0])
    kept = operator.indices[:, [1, 3]].clone()  # Taylor 0.5*v*w^2: 8e-5, 0.045, 0.02, 0.5 -> keep 1 and 3
    prunes = prune(graph, adam, Barrier(limit=100), GrowthPolicy(active_budget=2))
    assert operator.nnz == 6 * 2 and adam.param_groups[0]["params"][0] is operator.values
    core0 = operator.indices[:, (operator.indices[0] < 2) & (operator.indices[1] < 2)]
    assert torch.equal(core0, kept)
    assert [c.object for c in prunes] == [f"core:{n}" for n in range(6)] and prunes[0].entries == 2
    assert prunes[0].evidence["taylor_score"] == pytest.approx(0.5 * (0.001 * 0.16 + 0.04))
    assert (prunes[0].complexity_before, prunes[-1].complexity_after) == (24, 12)


def test_prox_l1_consolidates_small_entries_to_identity_and_frees_their_structure() -> None:
    graph = Graph(6, 2, max_history_length=2, cores=True)
    adam = _graph_after_one_adam_step(graph)
    operator = graph.operator
    with torch.no_grad():
        operator.values.copy_(torch.linspace(-0.2, 0.2, operator.nnz))
    prox_l1(operator, 0.05)
    survivors = operator.values.detach()[operator.values.detach() != 0].clone()
    assert (survivors.abs() <= 0.15 + 1e-6).all() and len(survivors) < operator.nnz
    protected = prune(graph, adam, Barrier(limit=100), GrowthPolicy(l1=1.0), protected=operator.nnz)
    assert protected == [] and operator.nnz == 24  # entries committed in this cycle are not pruned in it
    prune(graph, adam, Barrier(limit=100), GrowthPolicy(l1=1.0))
    assert operator.nnz == len(survivors) and torch.equal(operator.values.detach(), survivors)
    state = torch.randn(2, 6, 2)
    with torch.no_grad():
        operator.values.zero_()
    assert torch.equal(graph(state, 3)[:, -1], state)  # what is left at zero is the identity again


def test_a_growth_policy_reports_every_bad_setting_at_once() -> None:
    with pytest.raises(ConfigError) as refused:
        GrowthPolicy(snr_batches=1, commits_per_object=3, struct_budget=0, probe_lr=0.0)
    for problem in ("snr_batches must be >= 2", "hard rule", "struct_budget must be >= 1 or null", "probe_lr one > 0"):
        assert problem in str(refused.value)
    # Each was taken and grew the graph regardless (a negative eps or weight, a NaN threshold, a probe_lr float32
    # cannot hold).
    for setting, says in [({"variance_weight": -5.0}, "variance_weight must be a finite number >= 0, got -5.0"),
                          ({"eps": -1.0}, "eps must be a finite number > 0, got -1.0"),
                          ({"eps": 0.0}, "eps must be a finite number > 0, got 0.0"),
                          ({"snr_threshold": float("nan")}, "snr_threshold must be a finite number >= 0, got nan"),
                          ({"l1": float("inf")}, "l1 must be a finite number >= 0"),
                          ({"probe_lr": 1e300}, "probe_lr one > 0 (at most 1e+30), got 0.0 and 1e+300")]:
        with pytest.raises(ConfigError, match=re.escape(says)):
            GrowthPolicy(**setting)
    assert GrowthPolicy(snr_batches=2, probe_steps=1, probe_batches=3).batches_per_cycle == 6


@pytest.mark.parametrize("until_step", [0, -3])
def test_a_growth_planner_that_could_never_stop_in_time_is_refused(until_step: int) -> None:
    """until_step -3 grew the graph at step 1 all the same."""
    from lit_psion.callbacks import GrowthPlanner

    with pytest.raises(ConfigError, match=f"growth until_step must be >= 1 or null .*got {until_step}"):
        GrowthPlanner(until_step=until_step)
