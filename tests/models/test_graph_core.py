"""GraphCore and its growth planner (issue 7's acceptance): identity pass-through, growth by evidence
beating a static sparse model with the same final nnz, the barrier bound, the delta log on rollouts,
and exact resume with the grown structure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lit_psion.callbacks import GrowthPlanner, Receipts
from lit_psion.cli import main
from lit_psion.core.errors import ConfigError
from lit_psion.core.run import read_latest
from lit_psion.datamodules import DynamicsDataModule
from lit_psion.models import GraphCore
from lit_psion.nn.delta_log import DeltaStateLog
from lit_psion.nn.graph import SuperGraph, build_hierarchy
from lit_psion.nn.sparse import SparseMaskedLinear, follow_parameter
from tests.helpers import assert_tree_equal, fit, latest_checkpoint

PRESET = "configs/graph_core_oscillators.yaml"


def _data(**overrides: Any) -> DynamicsDataModule:
    settings = {"n_bodies": 6, "n_train": 24, "n_val": 8, "steps": 80, "window": 8, "batch_size": 16, "seed": 7}
    return DynamicsDataModule(**{**settings, **overrides})


def _model(**overrides: Any) -> GraphCore:
    settings = {"n_nodes": 6, "node_dim": 2, "max_history_length": 2, "levels": 2, "path": "dense"}
    return GraphCore(**{**settings, **overrides})


def _train(model: GraphCore, data: DynamicsDataModule, steps: int, callbacks: list, **trainer: Any) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    run = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, callbacks=callbacks, num_sanity_val_steps=0,
                    check_val_every_n_epoch=10_000, **trainer)  # fmt: skip
    run.fit(model, data)
    return run


def _held_out(model: GraphCore, data: DynamicsDataModule) -> float:
    with torch.no_grad():
        return sum(float(model.task_loss(batch)) for batch in data.val_dataloader()) / len(data.val_dataloader())


class RecordComplexity(L.Callback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.seen.append(pl_module.complexity)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_an_untrained_graph_core_passes_state_through_exactly(levels: int) -> None:
    model = _model(n_nodes=8, levels=levels, initial="cores")
    state = torch.randn(3, 16)
    assert torch.equal(model.rollout(state, 5), state[:, None].expand(-1, 5, -1))
    windows = torch.randn(2, 4, 16)
    assert torch.equal(model(windows), windows)  # every one-step prediction is the state itself


def test_the_hierarchy_is_bounded_by_log2_and_higher_levels_reach_the_leaves() -> None:
    tiers = build_hierarchy(8, 3)
    assert [len(tier) for tier in tiers] == [8, 4, 2] and tiers[2][1].leaves() == [4, 5, 6, 7]
    assert [m.leaves() for m in build_hierarchy(5, 3)[1]] == [[0, 1], [2, 3, 4]]  # a leftover joins a cluster
    with pytest.raises(ConfigError, match=r"ceil\(log2\(8\)\) = 3"):
        build_hierarchy(8, 4)
    graph = SuperGraph(4, 1, levels=2)
    with torch.no_grad():
        graph.sup_edges[0].values.fill_(1.0)  # leaves now read their cluster's proposal (the mean state)
    history = graph.level0.initial_history(torch.tensor([[[1.0], [3.0], [10.0], [20.0]]]))
    new = graph.step(history, 1)[0, :, 0, 0]
    assert torch.equal(new, torch.tensor([1 + 2, 3 + 2, 10 + 15, 20 + 15.0]))


def test_follow_parameter_carries_adam_state_through_grow_and_drop() -> None:
    layer = SparseMaskedLinear(4, 4, torch.tensor([[0, 1], [0, 1]]))
    adam = torch.optim.Adam(layer.parameters(), lr=0.1)
    layer(torch.randn(3, 4)).pow(2).sum().backward()
    adam.step()
    moment = adam.state[layer.values]["exp_avg_sq"].clone()
    old = layer.values
    source = layer.grow(torch.tensor([[2], [3]]), torch.tensor([0.5]))
    follow_parameter(adam, old, layer.values, source)
    assert adam.param_groups[0]["params"] == [layer.values] and layer.values.tolist()[2] == 0.5
    assert torch.equal(adam.state[layer.values]["exp_avg_sq"], torch.cat([moment, torch.zeros(1)]))
    old = layer.values
    source = layer.drop(torch.tensor([0]))
    follow_parameter(adam, old, layer.values, source)
    assert layer.indices.tolist() == [[1, 2], [1, 3]]
    assert torch.equal(adam.state[layer.values]["exp_avg_sq"], torch.cat([moment[1:], torch.zeros(1)]))


def test_growth_by_evidence_beats_a_static_sparse_model_with_the_same_final_nnz(tmp_path: Path) -> None:
    data = _data(n_bodies=8, steps=100, window=16, batch_size=32)
    grown = _model(n_nodes=8, initial="empty")
    _train(grown, data, 300, [GrowthPlanner(every_n_steps=20, until_step=200)])
    static = _model(n_nodes=8, initial="random", initial_nnz=grown.complexity, mask_seed=0)
    _train(static, data, 300, [])
    assert static.complexity == grown.complexity > 0
    grown_mse, static_mse = _held_out(grown, data), _held_out(static, data)
    print(f"held-out MSE, nnz {grown.complexity}: grown {grown_mse:.3e}, static {static_mse:.3e}")
    assert grown_mse < 0.5 * static_mse
    # the evidence found the ring: nearly every grown entry reads the node itself or a ring neighbour
    where = grown.growable.coordinates(grown.growable.operator.indices)
    offsets = ((where["source"] - where["target"]) % 8).tolist()
    assert sum(offset in (0, 1, 7) for offset in offsets) >= 0.9 * len(offsets)
    assert {0, 1, 7} <= set(offsets)


def test_the_barrier_keeps_complexity_below_the_limit_at_every_step(tmp_path: Path) -> None:
    data = _data()
    model = _model(initial="empty", complexity_limit=13)
    record = RecordComplexity()
    receipts = Receipts()
    run = _train(model, data, 60, [record, GrowthPlanner(every_n_steps=10), receipts],
                 default_root_dir=str(tmp_path))  # fmt: skip
    assert max(record.seen) == model.complexity == 12  # regions of 2 fill up to just below the limit
    assert run.callbacks[1].counters["commits"] == 6
    growth = [json.loads(line)["body"] for line in (tmp_path / "receipts.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "growth"]  # fmt: skip
    assert len(growth) == 6 and all(r["complexity_after"] < 13 and r["gamma_after"] < 1e3 for r in growth)
    commit = growth[0]
    assert commit["action"] == "commit" and commit["entries"] == 2
    assert commit["evidence"]["snr"] >= 1.0 and commit["evidence"]["loss_change_mean"] < 0
    assert set(commit["evidence"]) == {"snr", "loss_change_mean", "loss_change_std", "score"}


def _planner_at_step(model: GraphCore, planner: GrowthPlanner, tmp_path: Path) -> tuple[L.Trainer, torch.optim.Adam]:
    """A trainer with receipts and an Adam that has taken one step, to drive the planner directly."""
    trainer = L.Trainer(logger=False, callbacks=[planner, Receipts()], default_root_dir=str(tmp_path))
    receipts = trainer.callbacks[1]
    receipts.setup(trainer, model, "fit")
    receipts.on_fit_start(trainer, model)
    adam = torch.optim.Adam(model.parameters())
    model.task_loss(_data().sample_batch(0)).backward()
    adam.step()
    return trainer, adam


def _growth_receipts(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "receipts.jsonl").read_text().splitlines()
    return [json.loads(line)["body"] for line in lines if json.loads(line)["kind"] == "growth"]


def test_pruning_keeps_each_object_within_its_active_budget_by_taylor_score(tmp_path: Path) -> None:
    model = _model(initial="cores", levels=1)  # 4 Hot entries per core
    planner = GrowthPlanner(active_budget=2)
    trainer, adam = _planner_at_step(model, planner, tmp_path)
    operator = model.growable.operator
    with torch.no_grad():  # core 0: |w| ranks entries 0 > 1 > 2 > 3, the curvature turns the Taylor order around
        operator.values[:4] = torch.tensor([0.4, 0.3, 0.2, 0.1])
        adam.state[operator.values]["exp_avg_sq"][:4] = torch.tensor([0.001, 1.0, 1.0, 100.0])
    kept = operator.indices[:, [1, 3]].clone()  # Taylor 0.5*v*w^2: 8e-5, 0.045, 0.02, 0.5 -> keep 1 and 3
    planner._prune(trainer, model, model.growable, adam, step=5)
    assert model.complexity == 6 * 2 and adam.param_groups[0]["params"][0] is operator.values
    core0 = operator.indices[:, (operator.indices[0] < 2) & (operator.indices[1] < 2)]
    assert torch.equal(core0, kept)
    prunes = _growth_receipts(tmp_path)
    assert {r["object"] for r in prunes} == {f"core:{n}" for n in range(6)} and prunes[0]["entries"] == 2
    assert prunes[0]["evidence"]["taylor_score"] == pytest.approx(0.5 * (0.001 * 0.16 + 0.04))


def test_prox_l1_consolidates_small_entries_to_identity_and_frees_their_structure(tmp_path: Path) -> None:
    model = _model(initial="cores", levels=1)
    planner = GrowthPlanner(l1=1.0)
    trainer, adam = _planner_at_step(model, planner, tmp_path)
    operator = model.growable.operator
    with torch.no_grad():
        operator.values.copy_(torch.linspace(-0.2, 0.2, operator.nnz))
    planner._prox_l1(model, 0.05)
    survivors = operator.values.detach()[operator.values.detach() != 0].clone()
    assert (survivors.abs() <= 0.15 + 1e-6).all() and len(survivors) < operator.nnz
    planner._prune(trainer, model, model.growable, adam, step=5)
    assert model.complexity == len(survivors) and torch.equal(operator.values.detach(), survivors)
    state = torch.randn(2, 12)
    with torch.no_grad():
        operator.values.zero_()
    assert torch.equal(model.rollout(state, 3)[:, -1], state)  # what is left at zero is the identity again


def test_a_region_committed_in_a_cycle_is_not_pruned_in_it(tmp_path: Path) -> None:
    data = _data()
    model = _model(initial="empty")
    _train(model, data, 25, [GrowthPlanner(every_n_steps=10, active_budget=2), Receipts()],
           default_root_dir=str(tmp_path))  # fmt: skip
    growth = _growth_receipts(tmp_path)
    commits = {(r["step"], r["region"]) for r in growth if r["action"] == "commit"}
    prunes = {(r["step"], r["region"]) for r in growth if r["action"] == "prune"}
    assert commits and not commits & prunes


def test_growth_cycles_run_on_optimizer_steps_under_gradient_accumulation() -> None:
    data = _data()
    planner = GrowthPlanner(every_n_steps=10)
    _train(_model(initial="empty"), data, 25, [planner], accumulate_grad_batches=2)
    assert planner.counters["cycles"] == 3  # after steps 1, 11 and 21, once each


def test_rollouts_reconstruct_exactly_from_the_delta_log() -> None:
    model = _model(initial="cores", levels=1)
    with torch.no_grad():
        model.growable.operator.values.normal_(0, 0.1)
    model.growable.update_frequency.copy_(torch.tensor([1, 2, 1, 3, 1, 1]))  # some nodes hold: sparse deltas
    state = torch.randn(2, 12)
    log = DeltaStateLog(state, capacity=4)
    states = model.rollout(state, 10, log=log)
    for step in range(6, 11):  # the ring kept the last 4 deltas over a base at step 6
        assert torch.equal(log.reconstruct(step), states[:, step - 1])
    changed = [indices.numel() for _, indices, _ in log.deltas]
    assert min(changed) < state.numel()  # steps where held nodes kept their state log fewer entries


def test_a_grown_run_resumes_exactly_with_its_structure(tmp_path: Path) -> None:
    small = ("--data.init_args.n_bodies", "6", "--model.init_args.n_nodes", "6", "--data.init_args.steps", "60",
             "--data.init_args.n_train", "16", "--data.init_args.window", "8", "--trainer.val_check_interval", "20",
             "--trainer.callbacks.init_args.every_n_steps", "10", "--trainer.callbacks.init_args.until_step", "40",
             "--checkpoint.every_n_train_steps", "10", "--model.init_args.path", "sparse",
             "--model.init_args.decay_steps", "40")  # pinned: the run stopped at 11 keeps the schedule  # fmt: skip
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert fit(*small, "--trainer.max_steps", "40", "--trainer.default_root_dir", str(full), config=PRESET) == 0
    assert fit(*small, "--trainer.max_steps", "11", "--trainer.default_root_dir", str(parts), config=PRESET) == 0
    midway = latest_checkpoint(parts)  # written right after step 11's cycle: it must hold what that cycle grew
    assert midway["state_dict"]["graph.graphs.0.operator.indices"].shape[1] > 0
    assert fit(*small, "--trainer.max_steps", "40", "--trainer.default_root_dir", str(parts), "--ckpt_path", "last",
               config=PRESET) == 0  # fmt: skip
    reference, resumed = latest_checkpoint(full), latest_checkpoint(parts)
    assert resumed["global_step"] == reference["global_step"] == 40
    grown = reference["state_dict"]["graph.graphs.0.operator.indices"].shape[1]
    assert grown > midway["state_dict"]["graph.graphs.0.operator.indices"].shape[1]  # and grew after the resume
    assert_tree_equal(resumed["state_dict"], reference["state_dict"], "state_dict")
    assert_tree_equal(resumed["optimizer_states"], reference["optimizer_states"], "optimizer_states")
    receipts = (parts / read_latest(parts) / "receipts.jsonl").read_text()
    assert '"kind": "growth"' in receipts
    tested = ("test", "--config", PRESET, *small, "--trainer.default_root_dir", str(parts), "--ckpt_path", "last")
    assert main(list(tested)) == 0  # the grown structure loads for evaluation too


def test_growth_refuses_a_model_it_cannot_grow() -> None:
    from lit_psion.models import DecoderLM

    planner = GrowthPlanner()
    with pytest.raises(ConfigError, match="GrowthPlanner grows a GraphCore"):
        planner.on_fit_start(L.Trainer(logger=False), DecoderLM())
    with pytest.raises(ConfigError, match="n_nodes \\* node_dim"):
        _model(n_nodes=5)(torch.randn(1, 3, 12))
    with pytest.raises(ConfigError, match="hard rule"):
        GrowthPlanner(commits_per_object=3)
    with pytest.raises(ConfigError, match="initial_nnz >= 1"):
        _model(initial="random")


def test_a_checkpoint_of_another_shape_is_refused_in_one_line(tmp_path: Path) -> None:
    from lit_psion.core.errors import CheckpointError

    small = _model(max_history_length=1)
    checkpoint = {"state_dict": small.state_dict(), "model_signature": small.model_signature}
    with pytest.raises(CheckpointError, match="another shape"):
        _model(max_history_length=2).on_load_checkpoint(checkpoint)
