"""GraphCore and its growth planner (issue 7's acceptance): identity pass-through, growth by evidence
beating a static sparse model with the same final nnz, the barrier bound, the delta log on rollouts,
and exact resume with the grown structure. The growth functions themselves: tests/nn/test_graph_parts.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lit_psion.callbacks import GrowthPlanner, Receipts
from lit_psion.cli import main
from lit_psion.core.contracts import DataFacts, model_signature
from lit_psion.core.errors import ConfigError
from lit_psion.core.run import read_latest
from lit_psion.datamodules import DynamicsDataModule
from lit_psion.models import GraphCore
from lit_psion.models.graph_core import GraphCoreConfig
from lit_psion.nn.delta_log import DeltaStateLog
from lit_psion.nn.graph import SuperGraph, build_hierarchy
from lit_psion.nn.growth import GrowthPolicy
from lit_psion.nn.sparse import SparseMaskedLinear, follow_parameter
from tests.helpers import assert_tree_equal, fit, latest_checkpoint

PRESET = "configs/graph_core_oscillators.yaml"


def _data(**overrides: Any) -> DynamicsDataModule:
    settings = {"n_bodies": 6, "n_train": 24, "n_val": 8, "steps": 80, "window": 8, "batch_size": 16, "seed": 7}
    return DynamicsDataModule(**{**settings, **overrides})


def _model(**overrides: Any) -> GraphCore:
    settings = {"n_nodes": 6, "node_dim": 2, "max_history_length": 2, "levels": 2, "path": "dense"}
    return GraphCore(GraphCoreConfig(**{**settings, **overrides}))


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
    assert {r["stage_id"] for r in growth} == {"growth"}  # the run's stage, which the planner declares
    commit = growth[0]
    assert commit["action"] == "commit" and commit["entries"] == 2
    assert commit["evidence"]["snr"] >= 1.0 and commit["evidence"]["loss_change_mean"] < 0
    assert set(commit["evidence"]) == {"snr", "loss_change_mean", "loss_change_std", "score"}


def _growth_receipts(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "receipts.jsonl").read_text().splitlines()
    return [json.loads(line)["body"] for line in lines if json.loads(line)["kind"] == "growth"]


def test_a_region_committed_in_a_cycle_is_not_pruned_in_it(tmp_path: Path) -> None:
    data = _data()
    model = _model(initial="empty")
    _train(model, data, 25, [GrowthPlanner(every_n_steps=10, policy=GrowthPolicy(active_budget=2)), Receipts()],
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
    # decay_steps is pinned, so the run stopped at 11 keeps the schedule
    small = ("--data.init_args.n_bodies", "6", "--model.init_args.config.n_nodes", "6", "--data.init_args.steps", "60",
             "--data.init_args.n_train", "16", "--data.init_args.window", "8", "--trainer.val_check_interval", "20",
             "--data.init_args.n_test", "4",
             "--trainer.callbacks.init_args.every_n_steps", "10", "--trainer.callbacks.init_args.until_step", "40",
             "--checkpoint.every_n_train_steps", "10", "--model.init_args.config.path", "sparse",
             "--model.init_args.config.decay_steps", "40")  # fmt: skip
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
        GrowthPlanner(policy=GrowthPolicy(commits_per_object=3))
    with pytest.raises(ConfigError, match="initial_nnz >= 1"):
        _model(initial="random")
    with pytest.raises(ConfigError, match=r"datamodule\.sample_batch"):  # no data to draw probe batches from
        planner.on_fit_start(L.Trainer(logger=False), _model())


def test_a_state_dim_mismatch_is_refused_before_any_step_and_config_problems_together() -> None:
    with pytest.raises(ConfigError, match=r"state has 12 dims but n_nodes \* node_dim = 5 \* 2"):
        GraphCore(GraphCoreConfig(n_nodes=5), DataFacts(state_dim=12))  # at construction (the CLI links the facts)
    record = RecordComplexity()
    with pytest.raises(ConfigError, match=r"state has 12 dims but n_nodes \* node_dim = 5 \* 2"):
        _train(_model(n_nodes=5), _data(), 1, [record])  # a Python-API fit (no data facts): at setup
    assert record.seen == []  # before any step
    assert GraphCore(GraphCoreConfig(n_nodes=6), DataFacts(state_dim=12)).config.state_dim == 12
    assert GraphCore(GraphCoreConfig(n_nodes=5), DataFacts()).complexity == 0  # no state dim: nothing to refuse
    with pytest.raises(ConfigError) as refused:
        GraphCoreConfig(n_nodes=8, levels=4, initial="cores", path="gpu", lr=0.0)
    for problem in ("ceil(log2(8)) = 3, got 4", "path must be auto, sparse or dense, got 'gpu'",
                    "lr must be a finite number > 0"):
        assert problem in str(refused.value)  # every problem at once
    for lr in (1e300, float("inf"), float("nan")):  # 1e300 overflowed float32 inside the first step: exit 1
        says = f"lr must be a finite number > 0 and at most 1e\\+30, .*got {re.escape(repr(lr))}"
        with pytest.raises(ConfigError, match=says):
            GraphCoreConfig(lr=lr)
    with pytest.raises(ConfigError, match="initial structure has 32 entries, at or above complexity_limit 32"):
        GraphCoreConfig(n_nodes=8, initial="cores", complexity_limit=32)  # 8 cores of 2 x 2


def test_a_history_longer_than_the_data_window_is_refused_by_a_fit(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """Lags at or past the window only ever saw the window's first state: a history of 20 over windows of 16
    trained without a word."""
    says = r"max_history_length \(9\) exceeds the data's window \(8\): lags 8\.\.8 would never see a real state"
    GraphCore(GraphCoreConfig(n_nodes=6, max_history_length=9), DataFacts(state_dim=12, window=8))  # a recorded
    # run read back (validate, test) is built as it was trained: the check is the fit's
    record = RecordComplexity()
    with pytest.raises(ConfigError, match=says):
        _train(_model(max_history_length=9), _data(), 1, [record])  # a Python-API fit: at setup
    assert record.seen == []
    _train(_model(max_history_length=8), _data(), 1, [])  # every lag of the last position is real: taken
    args = ("--model.init_args.config.max_history_length", "17", "--trainer.default_root_dir", str(tmp_path / "r"))
    assert fit(*args, "--trainer.max_steps", "1", config=PRESET) == 2  # the preset's windows hold 16 states
    assert "set --model.init_args.config.max_history_length <= 16 or --data.window >= it" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").iterdir())


def test_a_checkpoint_of_another_shape_is_refused_in_one_line(tmp_path: Path) -> None:
    from lit_psion.core.errors import CheckpointError

    small = _model(max_history_length=1)
    checkpoint = {"state_dict": small.state_dict(), "model_signature": small.model_signature}
    with pytest.raises(CheckpointError, match="another shape"):
        _model(max_history_length=2).on_load_checkpoint(checkpoint)


# Nonlinear state functions (state_function: mlp) --------------------------------------------------------


def test_a_grown_nonlinear_graph_core_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    from lit_psion.core.errors import CheckpointError

    lorenz = {"n_nodes": 1, "node_dim": 3, "levels": 1, "state_function": "mlp", "state_hidden": 8}
    data = _data(system="lorenz", n_train=8, steps=40)
    model = _model(**lorenz)
    run = _train(model, data, 12, [GrowthPlanner(every_n_steps=5)])
    run.save_checkpoint(tmp_path / "grown.ckpt")
    assert model.complexity > 0 and model.graph.level0.state_function.output_weight.abs().sum() > 0
    checkpoint = torch.load(tmp_path / "grown.ckpt", weights_only=False)
    restored = _model(**lorenz)
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])
    state = torch.randn(4, 3)
    assert torch.equal(restored.rollout(state, 6), model.rollout(state, 6)) and restored.complexity == model.complexity
    with pytest.raises(CheckpointError, match="another shape"):  # a linear graph is another model
        _model(**{**lorenz, "state_function": "linear"}).on_load_checkpoint(checkpoint)
    linear = GraphCoreConfig(n_nodes=8)
    assert model_signature("GraphCore", **linear.shape) == model_signature(
        "GraphCore", n_nodes=8, node_dim=2, max_history_length=2, levels=2
    )  # a linear graph's signature is unchanged by the option


@pytest.mark.parametrize(
    ("setting", "quoted"),
    [({"state_function": "spline"}, "state_function must be linear or mlp, got 'spline'"),
     ({"state_function": "mlp", "state_hidden": -4}, "state_hidden must be a positive integer, got -4"),
     ({"state_hidden": 0}, "state_hidden must be a positive integer, got 0")],
)  # fmt: skip
def test_bad_state_function_settings_are_refused_quoting_the_value(setting: dict, quoted: str) -> None:
    with pytest.raises(ConfigError) as refused:
        GraphCoreConfig(**setting)
    assert quoted in str(refused.value)


@pytest.mark.parametrize("limit", ["16", "8"])
def test_a_resume_under_a_limit_the_structure_already_reaches_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                       limit: str) -> None:  # fmt: skip
    """A fresh run in that state is refused; a resume trained on with gamma at 1000 and its gradients blown up."""
    root = ("--trainer.default_root_dir", str(tmp_path))
    assert fit(*root, "--trainer.max_steps", "3", config=PRESET) == 0
    complexity = latest_checkpoint(tmp_path)["state_dict"]["graph.graphs.0.operator.indices"].shape[1]
    assert complexity >= int(limit)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert fit(*root, "--trainer.max_steps", "6", "--ckpt_path", "last", "--model.init_args.config.complexity_limit",
               limit, config=PRESET) == 2  # fmt: skip
    assert f"at or above complexity_limit {float(limit)}" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_a_graph_core_run_logs_samples_per_second_not_zero_tokens(tmp_path: Path) -> None:
    """Its batches hold no tokens: tokens/s and FLOP/s were logged as 0, and the dashboard drew a flat zero line."""
    import csv

    small = ("--data.init_args.n_bodies", "6", "--model.init_args.config.n_nodes", "6", "--data.init_args.n_train",
             "16", "--data.init_args.window", "8", "--trainer.log_every_n_steps", "1")  # fmt: skip
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3", *small, config=PRESET) == 0
    run = tmp_path / read_latest(tmp_path)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert "telemetry/tokens_per_s" not in rows[0] and "telemetry/flops_per_s" not in rows[0]
    assert [float(row["telemetry/samples_per_s"]) > 0 for row in rows if row["telemetry/samples_per_s"]] == [True] * 3
    assert (run / "dashboard" / "throughput.png").is_file()


def test_test_on_other_generator_settings_names_the_flag_to_restore(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """It said "(n_test differ); ... start a new run without --ckpt_path", which names no value and makes no sense
    for `test`."""
    small = ("--data.init_args.n_bodies", "6", "--model.init_args.config.n_nodes", "6", "--data.init_args.n_train",
             "16", "--data.init_args.window", "8", "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert fit(*small, "--trainer.max_steps", "2", "--data.init_args.n_test", "4", config=PRESET) == 0
    capsys.readouterr()
    assert main(["test", "--config", PRESET, *small, "--data.init_args.n_test", "8", "--ckpt_path", "last"]) == 3
    assert "give the settings it was trained with (--data.n_test 4)" in capsys.readouterr().err


def test_a_resume_that_changes_the_growth_schedule_says_so_and_records_it(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """The planner edits the graph between steps: growing every step from here (the preset grows every 25) trained
    another model than the run's, with no word and nothing in the resumed receipt."""
    small = ("--data.init_args.n_bodies", "6", "--model.init_args.config.n_nodes", "6", "--data.init_args.n_train",
             "16", "--data.init_args.window", "8", "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert fit(*small, "--trainer.max_steps", "3", config=PRESET) == 0
    capsys.readouterr()
    assert fit(*small, "--trainer.max_steps", "5", "--ckpt_path", "last", "--trainer.callbacks.init_args.every_n_steps",
               "1", config=PRESET) == 0  # fmt: skip
    assert "trainer.callbacks.GrowthPlanner.every_n_steps: 25 -> 1" in capsys.readouterr().err
    run = tmp_path / read_latest(tmp_path)
    receipts = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    resumed = next(r["body"] for r in receipts if r["body"].get("event") == "resumed")
    assert ["trainer.callbacks.GrowthPlanner.every_n_steps", 25, 1] in resumed["changed_settings"]


class ScheduledGrowth(GrowthPlanner):
    """A user's planner: a subclass, under its own name (matching by the name ``GrowthPlanner`` missed it)."""


def test_a_subclass_of_the_growth_planner_shapes_training_too(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    overlay = tmp_path / "growth.yaml"
    overlay.write_text(f"trainer:\n  callbacks:\n    - class_path: {__name__}.ScheduledGrowth\n      init_args:\n"
                       "        every_n_steps: 25\n")  # fmt: skip
    small = ("--data.init_args.n_bodies", "6", "--model.init_args.config.n_nodes", "6", "--data.init_args.n_train",
             "16", "--data.init_args.window", "8", "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert main(["fit", "--config", PRESET, "--config", str(overlay), *small, "--trainer.max_steps", "3"]) == 0
    capsys.readouterr()
    assert main(["fit", "--config", PRESET, "--config", str(overlay), *small, "--trainer.max_steps", "5",
                 "--ckpt_path", "last", "--trainer.callbacks.init_args.every_n_steps", "1"]) == 0  # fmt: skip
    assert "trainer.callbacks.ScheduledGrowth.every_n_steps: 25 -> 1" in capsys.readouterr().err


@pytest.mark.parametrize(("callback", "says"), [
    ("lit_psion.callbacks.PromotionGate", "PromotionGate gates an adapter fine-tune against its base; GraphCore has "
     "no base to compare with"),
    ("lit_psion.callbacks.GenerateSample", "GenerateSample decodes text with the data's tokenizer, but "
     "DynamicsDataModule has none"),
], ids=["promotion-gate", "generate-sample"])  # fmt: skip
def test_a_callback_that_has_nothing_to_do_on_this_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                    callback: str, says: str) -> None:  # fmt: skip
    """Each ran without a word and did nothing (no promotion decision, no sample), where the growth planner on a
    model it cannot grow is refused."""
    small = ("--data.init_args.n_bodies", "6", "--model.init_args.config.n_nodes", "6", "--data.init_args.n_train",
             "16", "--data.init_args.window", "8", "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert fit(*small, "--trainer.max_steps", "2", f"--trainer.callbacks+={callback}", config=PRESET) == 2
    assert says in capsys.readouterr().err


def _forged(edit: Any) -> dict:
    model = _model(initial="random", initial_nnz=30)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    edit(state)
    return {"state_dict": state, "model_signature": model.model_signature}


OPERATOR = "graph.graphs.0.operator"


def _set(key: str, value: Any) -> Any:
    return lambda state: state.__setitem__(key, value(state[key]))


def _negative(indices: torch.Tensor) -> torch.Tensor:
    indices[0, 0] = -3
    return indices


def _repeated(indices: torch.Tensor) -> torch.Tensor:
    indices[:, 1] = indices[:, 0]
    return indices


@pytest.mark.parametrize(("edit", "named", "problem"), [
    (_set(f"{OPERATOR}.indices", _negative), f"{OPERATOR}.indices", "outside [0, 12) x [0, 24) (min -3"),
    (_set(f"{OPERATOR}.values", lambda v: v[:10]), f"{OPERATOR}.values", "must be 30 finite floats"),
    (_set(f"{OPERATOR}.indices", lambda i: i.float()), f"{OPERATOR}.indices", "not an integer type"),
    (_set(f"{OPERATOR}.indices", _repeated), f"{OPERATOR}.indices", "more than once"),
    (_set(f"{OPERATOR}.values", lambda v: v.index_fill(0, torch.tensor([0]), float("nan"))), f"{OPERATOR}.values",
     "finite floats"),
    (_set("graph.sup_edges.0.indices", lambda i: i.flip(1)), "graph.sup_edges.0.indices", "fixed structure"),
    (_set("graph.pool_1", lambda p: p * 2), "graph.pool_1", "pooling"),
    (_set("graph.graphs.0.update_frequency", lambda f: f * 0), "graph.graphs.0.update_frequency", "holds 0"),
    (_set("graph.graphs.1.update_frequency", lambda f: f[:1]), "graph.graphs.1.update_frequency", "of shape (1,)"),
    (lambda state: state.pop(f"{OPERATOR}.values"), f"{OPERATOR}.values", "is missing"),
])  # fmt: skip
def test_a_checkpoint_with_a_forged_structure_is_refused_naming_the_tensor(edit: Any, named: str,
                                                                          problem: str) -> None:  # fmt: skip
    """A negative index was believed (and carried into the next checkpoint); values shorter than the indices
    failed in load_state_dict (exit 1). Every structure tensor is checked before anything loads."""
    from lit_psion.core.errors import CheckpointError

    model = _model(initial="random", initial_nnz=30)
    before = model.graph.level0.operator.indices.clone()
    with pytest.raises(CheckpointError, match=re.escape(f"tensor {named!r}")) as refused:
        model.on_load_checkpoint(_forged(edit))
    assert problem in str(refused.value) and refused.value.exit_code == 4
    assert torch.equal(model.graph.level0.operator.indices, before)  # nothing loaded
    model.on_load_checkpoint(_forged(lambda state: None))  # the untouched checkpoint loads


@pytest.mark.parametrize(("setting", "quoted"), [
    ({"barrier_scale": float("inf")}, "barrier_scale must be between 1e-06 and 1e+06"),  # gamma 0: trained nothing
    ({"barrier_scale": 1e-320}, "got 1e-320"),  # gamma infinite from step 1: reported as a divergence
    ({"barrier_scale": float("nan")}, "got nan"),
    ({"barrier_scale": 1e7}, "got 10000000.0"),
    ({"complexity_limit": float("inf")}, "complexity_limit must be a finite number > 0, got inf"),
    ({"complexity_limit": float("nan"), "barrier_scale": 0.0}, "got nan; barrier_scale must be"),
])  # fmt: skip
def test_a_barrier_that_would_zero_or_blow_up_the_loss_is_refused(setting: dict, quoted: str) -> None:
    with pytest.raises(ConfigError) as refused:
        GraphCoreConfig(**setting)
    assert quoted in str(refused.value)
    GraphCoreConfig(barrier_scale=1e-6, complexity_limit=1e300)  # the range's ends are taken


def test_an_infinite_barrier_scale_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = ("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "1")
    assert fit(*root, "--model.init_args.config.barrier_scale", ".inf", config=PRESET) == 2
    assert "barrier_scale must be between 1e-06 and 1e+06" in capsys.readouterr().err


def test_a_run_resumed_with_the_other_systems_preset_is_pointed_to_its_own_config_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The Lorenz preset resuming an oscillators run was told only the data flags (--data.n_bodies 8 --data.system
    oscillators); given them, the model's node count was refused next. The run's own config gives both."""
    root = ("--trainer.default_root_dir", str(tmp_path), "--data.init_args.n_train", "16")
    assert fit(*root, "--trainer.max_steps", "2", config=PRESET) == 0
    run = tmp_path / read_latest(tmp_path)
    capsys.readouterr()
    assert fit(*root, "--trainer.max_steps", "4", "--ckpt_path", "last", config="configs/graph_core_lorenz.yaml") == 3
    said = capsys.readouterr().err
    assert "--data.system oscillators" in said and f"or pass that run's own config (--config {run / 'config.yaml'})" \
        in said, said
    assert fit(*root, "--trainer.max_steps", "4", "--ckpt_path", "last", config=str(run / "config.yaml")) == 0
