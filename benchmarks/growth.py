"""Growth by evidence against a static sparse structure with the same final nnz (issue 7's acceptance).

Both sides are ``python -m lit_psion fit --config configs/graph_core_oscillators.yaml`` (the same
data, seed, steps and schedule). The *grown* side starts empty and is grown by the GrowthPlanner;
the *static* side starts with a seeded random structure of exactly the grown side's final nnz and
never changes it (no planner). The held-out (validation) one-step MSE of each final model is read
from its run's ``metrics.csv``; also reported: the pass-through MSE (what an empty structure
predicts: the floor any structure must beat) and how many grown entries read the node itself or a ring
neighbour (the true couplings of the oscillators).

    python benchmarks/growth.py
    python benchmarks/growth.py --steps 300 --mask-seeds 0 1 2      # quicker, more static masks

The last line of stdout is one JSON object; ``ratio`` is static MSE / grown MSE (above 1: growth wins).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from lit_psion.core.run import read_latest
from lit_psion.datamodules import DynamicsDataModule
from lit_psion.runs import load_run

PRESET = "configs/graph_core_oscillators.yaml"


def fit(root: Path, *args: str) -> Path:
    command = [sys.executable, "-m", "lit_psion", "fit", "--config", PRESET, "--trainer.default_root_dir", str(root),
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


def pass_through_mse() -> float:
    """Held-out MSE of predicting every next state as the current one (an empty structure's prediction)."""
    data = DynamicsDataModule(**yaml.safe_load(Path(PRESET).read_text())["data"]["init_args"])
    data.setup("validate")
    errors = [torch.nn.functional.mse_loss(batch["inputs"], batch["targets"]) for batch in data.val_dataloader()]
    return float(torch.stack(errors).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--mask-seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
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
    print(json.dumps(result))


if __name__ == "__main__":
    main()
