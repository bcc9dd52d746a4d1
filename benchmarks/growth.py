"""Growth by evidence against a static sparse structure with the same final nnz (issues 7 and 17).

``--system oscillators`` (the default, issue 7): both sides are
``python -m lit_psion fit --config configs/graph_core_oscillators.yaml`` (the same data, seed, steps and
schedule). The *grown* side starts empty and is grown by the GrowthPlanner; the *static* side starts with a
seeded random structure of exactly the grown side's final nnz and never changes it (no planner). The held-out
(validation) one-step MSE of each final model is read from its run's ``metrics.csv``; also reported: the
pass-through MSE (what an empty structure predicts: the floor any structure must beat) and how many grown
entries read the node itself or a ring neighbour (the true couplings of the oscillators).

``--system lorenz`` (issue 17): ``configs/graph_core_lorenz.yaml``, one node holding Lorenz's (x, y, z). Grown
with nonlinear state functions (``state_function: mlp``, the preset) against the same grown with linear ones,
and against static random structures with the grown nonlinear side's final nnz (each state function, no
planner). Each final model is scored on held-out trajectories by a *multi-step rollout*: from the true
history at every ``--start-stride``-th state, ``--rollout-steps`` free-running steps (no teacher forcing)
against the true trajectory; the MSE is over every step and state dim.

    python benchmarks/growth.py
    python benchmarks/growth.py --steps 300 --mask-seeds 0 1 2      # quicker, more static masks
    python benchmarks/growth.py --system lorenz                      # about 4 minutes on 2 CPU cores

The last line of stdout is one JSON object; ``ratio`` is static MSE / grown MSE (above 1: growth wins), and for
Lorenz ``ratio_linear_over_mlp`` is the grown linear rollout MSE over the grown nonlinear one.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from lit_psion.core.run import read_latest
from lit_psion.datamodules import DynamicsDataModule
from lit_psion.models.graph_core import GraphCore, GraphCoreConfig
from lit_psion.nn.graph import unroll
from lit_psion.runs import load_run

PRESET = "configs/graph_core_oscillators.yaml"
LORENZ = "configs/graph_core_lorenz.yaml"


def fit(root: Path, *args: str, preset: str = PRESET) -> Path:
    command = [sys.executable, "-m", "lit_psion", "fit", "--config", preset, "--trainer.default_root_dir", str(root),
               "--trainer.enable_progress_bar", "false", *args]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    return root / read_latest(root)


def held_out_mse(run_dir: Path) -> float:
    with (run_dir / "metrics.csv").open() as f:
        values = [row["val/loss"] for row in csv.DictReader(f) if row.get("val/loss")]
    return float(values[-1])


def final_structure(run_dir: Path) -> torch.Tensor:
    """The level-0 structure (2, nnz) of the run's latest verified checkpoint."""
    return load_run(run_dir).state["state_dict"]["graph.graphs.0.operator.indices"]


def pass_through_mse(preset: str = PRESET) -> float:
    """Held-out MSE of predicting every next state as the current one (an empty structure's prediction)."""
    data = DynamicsDataModule(**yaml.safe_load(Path(preset).read_text())["data"]["init_args"])
    data.setup("validate")
    errors = [torch.nn.functional.mse_loss(batch["inputs"], batch["targets"]) for batch in data.val_dataloader()]
    return float(torch.stack(errors).mean())


def oscillators(args: argparse.Namespace) -> dict:
    steps = ("--trainer.max_steps", str(args.steps), "--trainer.val_check_interval", str(args.steps))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        grown_run = fit(root / "grown", *steps)
        indices = final_structure(grown_run)
        nnz = indices.shape[1]
        graph = yaml.safe_load(Path(PRESET).read_text())["model"]["init_args"]["config"]
        n_nodes, dim = graph["n_nodes"], graph["node_dim"]
        target, source = indices[0] // dim, (indices[1] // dim) % n_nodes
        ring = int(torch.isin((source - target) % n_nodes, torch.tensor([0, 1, n_nodes - 1])).sum())
        static = {}
        for seed in args.mask_seeds:
            static_args = ("--trainer.callbacks", "[]", "--model.init_args.config.initial", "random",  # no planner
                           "--model.init_args.config.initial_nnz", str(nnz),
                           "--model.init_args.config.mask_seed", str(seed))  # fmt: skip
            static[seed] = held_out_mse(fit(root / f"static{seed}", *steps, *static_args))
        grown = held_out_mse(grown_run)
        best_static = min(static.values())
        result = {"benchmark": "growth", "preset": PRESET, "steps": args.steps, "final_nnz": nnz,
                  "grown_val_mse": grown, "static_val_mse": static, "best_static_val_mse": best_static,
                  "pass_through_val_mse": pass_through_mse(), "grown_entries_on_the_ring": ring,
                  "ratio": best_static / grown, "target": "ratio > 1 (grown lower than every static mask)",
                  "meets_target": grown < best_static}  # fmt: skip
    return result


# Lorenz: multi-step rollouts ----------------------------------------------------------------------


def preset_settings(preset: str) -> tuple[dict, dict]:
    """The preset's model config and data settings."""
    settings = yaml.safe_load(Path(preset).read_text())
    return settings["model"]["init_args"]["config"], settings["data"]["init_args"]


def trained_model(run_dir: Path, config: dict) -> GraphCore:
    """The run's final model, rebuilt from its config and latest verified checkpoint (structure included)."""
    state = load_run(run_dir).state
    model = GraphCore(GraphCoreConfig(**config))
    model.on_load_checkpoint(state)
    model.load_state_dict(state["state_dict"])
    return model.eval()


def rollout_mse(step: Callable, trajectories: torch.Tensor, n_nodes: int, history: int, rollout_steps: int,
                stride: int) -> float:  # fmt: skip
    """Mean squared error of ``rollout_steps`` free-running steps from the true history at every
    ``stride``-th state of ``trajectories`` (n, T, state dim), against the true continuation."""
    n, length, dim = trajectories.shape
    starts = torch.arange(history - 1, length - rollout_steps, stride)
    states = trajectories.view(n, length, n_nodes, dim // n_nodes)
    lagged = torch.stack([states[:, starts - lag] for lag in range(history)], dim=3)  # (n, starts, nodes, h, d)
    future = torch.stack([states[:, starts + k] for k in range(1, rollout_steps + 1)], dim=2)  # (n, s, k, nodes, d)
    with torch.no_grad():
        predicted = unroll(step, lagged.flatten(0, 1), rollout_steps)  # (n * starts, k, nodes, d)
    return float(torch.nn.functional.mse_loss(predicted, future.flatten(0, 1)))


def linear_optimum(train: torch.Tensor, held_out: torch.Tensor, history: int) -> float:
    """Held-out one-step MSE of the best dense linear state function on ``history`` lags (least squares on the
    training trajectories): what no linear graph of this history can beat, however trained or grown."""

    def pairs(trajectories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length, dim = trajectories.shape[1], trajectories.shape[2]
        lagged = [trajectories[:, history - 1 - lag : length - 1 - lag] for lag in range(history)]
        change = trajectories[:, history:] - trajectories[:, history - 1 : -1]  # the update beyond the identity
        return torch.cat(lagged, -1).reshape(-1, history * dim).double(), change.reshape(-1, dim).double()

    inputs, change = pairs(train)
    weight = torch.linalg.lstsq(inputs, change).solution
    inputs, change = pairs(held_out)
    return float(((inputs @ weight - change) ** 2).mean())


def lorenz(args: argparse.Namespace) -> dict:
    config, data_settings = preset_settings(LORENZ)
    steps = ("--trainer.max_steps", str(args.steps), "--trainer.val_check_interval", str(args.steps))
    data = DynamicsDataModule(**data_settings)
    held_out = data.trajectories("val")
    history, n_nodes = config["max_history_length"], config["n_nodes"]

    def score(run_dir: Path, **overrides: object) -> dict:
        model = trained_model(run_dir, {**config, **overrides})
        return {"nnz": model.complexity, "val_one_step_mse": held_out_mse(run_dir),
                "rollout_mse": rollout_mse(model.graph.step, held_out, n_nodes, history, args.rollout_steps,
                                           args.start_stride)}  # fmt: skip

    def identity_step(states: torch.Tensor, t: int) -> torch.Tensor:  # what an empty, untrained graph does
        return torch.cat([states[:, :, :1], states[:, :, :-1]], dim=2)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        grown = {"mlp": score(fit(root / "grown_mlp", *steps, preset=LORENZ))}
        linear = ("--model.init_args.config.state_function", "linear")
        grown["linear"] = score(fit(root / "grown_linear", *steps, *linear, preset=LORENZ), state_function="linear")
        nnz = grown["mlp"]["nnz"]
        static: dict[str, dict[int, dict]] = {"mlp": {}, "linear": {}}
        for kind in static:
            for seed in args.mask_seeds:
                static_args = ("--trainer.callbacks", "[]", "--model.init_args.config.initial", "random",
                               "--model.init_args.config.initial_nnz", str(nnz),
                               "--model.init_args.config.mask_seed", str(seed),
                               "--model.init_args.config.state_function", kind)  # fmt: skip
                run_dir = fit(root / f"static_{kind}{seed}", *steps, *static_args, preset=LORENZ)
                static[kind][seed] = score(run_dir, state_function=kind, initial="random", initial_nnz=nnz,
                                           mask_seed=seed)  # fmt: skip
    best_linear, best_mlp = (min(s["rollout_mse"] for s in static[kind].values()) for kind in ("linear", "mlp"))
    mlp, lin = grown["mlp"]["rollout_mse"], grown["linear"]["rollout_mse"]
    return {"benchmark": "growth", "system": "lorenz", "preset": LORENZ, "steps": args.steps,
            "rollout_steps": args.rollout_steps, "start_stride": args.start_stride, "grown": grown, "static": static,
            "pass_through_rollout_mse": rollout_mse(identity_step, held_out, n_nodes, history, args.rollout_steps,
                                                    args.start_stride),
            "pass_through_val_one_step_mse": pass_through_mse(LORENZ),
            "linear_optimum_val_one_step_mse": linear_optimum(data.trajectories("train"), held_out, history),
            "ratio_linear_over_mlp": lin / mlp, "ratio_best_static_linear_over_mlp": best_linear / mlp,
            "ratio_best_static_mlp_over_mlp": best_mlp / mlp,
            "target": "grown nonlinear rollout MSE below grown linear and every static linear structure",
            "meets_target": mlp < lin and mlp < best_linear}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", choices=["oscillators", "lorenz"], default="oscillators")
    parser.add_argument("--steps", type=int, default=None, help="training steps (oscillators 600, lorenz 1200)")
    parser.add_argument("--mask-seeds", type=int, nargs="+", default=None, help="(oscillators 0 1 2, lorenz 0 1)")
    parser.add_argument("--rollout-steps", type=int, default=20, help="lorenz: free-running steps scored")
    parser.add_argument("--start-stride", type=int, default=5, help="lorenz: a rollout from every this many states")
    args = parser.parse_args()
    defaults = {"oscillators": (600, [0, 1, 2]), "lorenz": (1200, [0, 1])}[args.system]
    args.steps = args.steps or defaults[0]
    args.mask_seeds = args.mask_seeds or defaults[1]
    print(json.dumps(oscillators(args) if args.system == "oscillators" else lorenz(args)))


if __name__ == "__main__":
    main()
