"""A transactional graph core whose rollbacks restore a checkpoint written before a growth cycle: the restore takes
the checkpoint's structure as a resume does (the values of another shape, in new Parameters the optimizer then
steps). It was a strict load into the grown module: exit 1 ("size mismatch for graph.graphs.0.operator.values"),
and every resume of the run died the same way."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lit_psion.cli import main
from lit_psion.core.chain import log_lines
from tests.helpers import latest_checkpoint

FLAGS = ["--config", "configs/graph_core_oscillators.yaml", "--config", "configs/overlays/transactional.yaml",
         "--trainer.callbacks.every_n_steps", "5", "--checkpoint.every_n_train_steps", "4",
         "--model.init_args.config.lr", "0.3", "--trainer.strategy.policy.rollback_tol", "0",
         "--trainer.strategy.policy.restore_after", "1", "--trainer.strategy.policy.stop_after", "1000"]  # fmt: skip


def test_a_restore_across_a_growth_cycle_takes_the_checkpoints_structure(tmp_path: Path) -> None:
    root = ["--trainer.default_root_dir", str(tmp_path)]
    assert main(["fit", *FLAGS, *root, "--trainer.max_steps", "12"]) == 0
    (log,) = tmp_path.glob("*/receipts.jsonl")
    receipts = [json.loads(line) for line in log_lines(log.read_text())]
    grown = {r["body"]["step"] for r in receipts if r["kind"] == "growth"}
    restores = [r["body"]["step"] for r in receipts if r["kind"] == "transaction"
                and str(r["body"]["action"]).startswith("restored:step-000004")]  # fmt: skip
    assert 6 in grown and any(step > 6 for step in restores), (grown, restores)  # grew after step 4's checkpoint
    state = latest_checkpoint(tmp_path)
    weights = [value for name, value in state["state_dict"].items() if name.endswith("operator.values")]
    moments = [s for s in state["optimizer_states"][0]["state"].values() if "exp_avg" in s]
    assert {tuple(w.shape) for w in weights} <= {tuple(m["exp_avg"].shape) for m in moments}, "optimizer left behind"
    assert all(torch.isfinite(w).all() for w in weights)
    assert main(["fit", *FLAGS, *root, "--trainer.max_steps", "16", "--ckpt_path", "last"]) == 0
