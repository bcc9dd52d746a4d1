"""A mesh joiner unlike the last epoch's nodes is turned away alone; the mesh trains on (docs/elastic.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import RunLayout, read_json
from tests.helpers import callbacks_config
from tests.strategies.test_elastic import _free_port, _node_processes, _wait_for, memberships

JOINERS = [  # (case, the joiner's node id and extra arguments, what its refusal says)
    ("other settings", ("B", "--model.init_args.optimizer.lr", "0.1"),
     "the mesh's settings (model.optimizer.lr: 0.003 on the mesh, 0.1 on rank"),
    ("the node id of a node it has", ("A",), "node id 'A' is already a node of this mesh (another `mesh launch`"),
]  # fmt: skip


@pytest.mark.slow  # two real `mesh launch` nodes: ~1 minute
@pytest.mark.parametrize(("case", "joiner", "refusal_says"), JOINERS, ids=[c[0] for c in JOINERS])
def test_a_joiner_unlike_the_mesh_is_turned_away_and_the_mesh_trains_on(
    tmp_path: Path, case: str, joiner: tuple[str, ...], refusal_says: str
) -> None:
    """A second node joins node A's mesh with another learning rate, or with A's own node id. The joiner alone is
    refused (exit 2, its `mesh launch` stops); A re-forms without it and completes the run. Both used to stop the
    whole mesh."""
    port, root, env = _free_port(), tmp_path / "runs", {**os.environ, "OMP_NUM_THREADS": "1"}
    store = subprocess.Popen([sys.executable, "-m", "lit_psion", "mesh", "store", "--port", str(port)], env=env,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    slow = callbacks_config(tmp_path / "slow.json", ("SlowSteps", {"seconds": 0.05}))
    fit_args = ["--config", "fixtures/tiny.yaml", "--config", slow, "--nnodes", "1:2", "--store", f"127.0.0.1:{port}",
                "--run-id", "m", "--max-restarts", "3", "--last-call", "3", "--trainer.default_root_dir", str(root),
                "--trainer.max_steps", "400", "--trainer.enable_progress_bar", "false",
                "--checkpoint.every_n_train_steps", "50", "--model.init_args.decoder.dropout", "0.0"]  # fmt: skip
    layout = RunLayout(root, "m")

    def launch(node: str, *extra: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "lit_psion", "mesh", "launch", "--node-id", node, *fit_args, *extra]
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def steps() -> int:
        return layout.receipts.read_text().count('"trainer_step"') if layout.receipts.is_file() else 0

    agents: dict[str, subprocess.Popen] = {}
    try:
        assert "listening" in store.stdout.readline()
        agents["A"] = launch("A")
        assert _wait_for(lambda: steps() >= 20, 180), "node A trains"
        agents["B"] = launch(*joiner)
        assert agents["B"].wait(timeout=180) == 2
        refusal = agents["B"].stderr.read()
        assert refusal_says in refusal, refusal[-2000:]
        assert agents["A"].wait(timeout=400) == 0, agents["A"].stderr.read()[-3000:]
    finally:
        for process in [store, *agents.values()]:
            if process.poll() is None:
                process.kill()
        for node in "AB":
            for pid in _node_processes(node):
                os.kill(pid, signal.SIGKILL)
    assert read_json(layout.run_file)["status"] == "completed"
    history = [(e["change"], sorted(n for n, s in e["members"].items() if s == "active")) for e in memberships(layout)]
    assert ["B"] not in [members for _, members in history] and all(members == ["A"] for _, members in history)
    assert history[0][0] == "start" and len(history) >= 2, "A re-formed on its own after turning B away"
    assert main(["doctor", str(layout.run_dir)]) == 0
