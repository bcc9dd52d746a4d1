"""An elastic mesh on one machine, timed from its own receipts: joins, kills, drains and throughput.

Real ``mesh store`` and ``mesh launch`` processes (torchrun agents, gloo) train one run of
``fixtures/tiny.yaml`` (a 2-layer character decoder) with a global batch of 12. The script walks
the mesh through 2 nodes -> 3 (C joins) -> 2 (C killed with SIGKILL, agent and worker) -> 1 (B
drained), and reads every time from the run's receipts (``created_at`` of the ``trainer_step``
receipts around each ``membership`` receipt):

- ``join_to_bigger_world_s``: from starting C's ``mesh launch`` to the first step at world 3;
- ``kill_to_training_s``: from the SIGKILL to the first step at world 2 again;
- ``drain_to_training_s``: from ``mesh drain`` to the first step at world 1;
- ``steps_replayed``: per change, the steps trained past the resumed checkpoint (a kill replays
  what the lost epoch trained since its last checkpoint; a join or a drain checkpoints first);
- ``tokens_per_s``: global tokens per second at world 1, 2 and 3 (steady state, median of the
  step intervals). On 2 cores, 3 single-threaded workers share 2 cores: world 3 is slower per
  step than world 2, so read it as the cost of a larger mesh on an oversubscribed machine, not as
  scaling.

    python benchmarks/elastic.py            # about 3 minutes
    python benchmarks/elastic.py --window 5 # shorter measurement windows

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH, BLOCK = 12, 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=10.0, help="seconds of steady training per world size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lit_psion_elastic_") as tmp:
        print(json.dumps(run_mesh(Path(tmp), args.window)))


def run_mesh(tmp: Path, window: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    port, root = _free_port(), tmp / "runs"
    receipts = root / "bench" / "receipts.jsonl"
    store = subprocess.Popen([sys.executable, "-m", "lit_psion", "mesh", "store", "--port", str(port)], env=env,
                             cwd=REPO, stdout=subprocess.PIPE, text=True)  # fmt: skip
    store.stdout.readline()
    fit_args = ["--config", "fixtures/tiny.yaml", "--nnodes", "1:3", "--store", f"127.0.0.1:{port}", "--run-id",
                "bench", "--trainer.default_root_dir", str(root), "--trainer.max_steps", "1000000",
                "--data.batch_size", str(GLOBAL_BATCH), "--trainer.enable_progress_bar", "false",
                "--checkpoint.every_n_train_steps", "100", "--trainer.val_check_interval", "100000",
                "--trainer.log_every_n_steps", "100", "--model.init_args.decoder.dropout", "0.0"]  # fmt: skip
    nodes: dict[str, subprocess.Popen] = {}

    def launch(node: str) -> None:
        command = [sys.executable, "-m", "lit_psion", "mesh", "launch", "--node-id", node, *fit_args]
        nodes[node] = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)  # fmt: skip

    def chain() -> list[dict]:
        if not receipts.is_file():
            return []
        return [json.loads(line) for line in receipts.read_text().splitlines() if line.endswith("}")]

    def epochs() -> int:
        return sum(receipt["kind"] == "membership" for receipt in chain())

    def wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit(f"benchmark: {what} did not happen within {seconds} s")
            time.sleep(0.2)

    def steps_in_epoch(epoch: int) -> int:
        return len(_epoch_steps(chain(), epoch))

    try:
        launch("A")
        launch("B")
        wait_for(lambda: epochs() >= 1 and steps_in_epoch(1) > 20, 240, "the 2-node mesh training")
        time.sleep(window)
        joined = time.time()
        launch("C")
        wait_for(lambda: epochs() >= 2 and steps_in_epoch(2) > 20, 240, "C joining")
        time.sleep(window)
        killed = time.time()
        for pid in _node_processes("C"):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: epochs() >= 3 and steps_in_epoch(3) > 20, 240, "the mesh re-forming without C")
        time.sleep(window)
        drained = time.time()
        subprocess.run([sys.executable, "-m", "lit_psion", "mesh", "drain", str(root / "bench"), "B"], env=env,
                       cwd=REPO, check=True, capture_output=True)  # fmt: skip
        wait_for(lambda: epochs() >= 4 and steps_in_epoch(4) > 20, 240, "A training on after B's drain")
        time.sleep(window)
    finally:
        for node in nodes:
            for pid in _node_processes(node):
                os.kill(pid, signal.SIGKILL)
        store.kill()
    receipts_now = chain()
    memberships = [r["body"] for r in receipts_now if r["kind"] == "membership"]
    first_step = {epoch: _epoch_steps(receipts_now, epoch)[0]["created_at"] for epoch in (2, 3, 4)}
    rates = {str(m["world_size"]): _tokens_per_s(_epoch_steps(receipts_now, m["epoch"])) for m in memberships}
    return {
        "benchmark": "elastic",
        "changes": [f"{m['change']}:{m['previous_world_size']}->{m['world_size']}" for m in memberships],
        "join_to_bigger_world_s": round(first_step[2] - joined, 2),
        "kill_to_training_s": round(first_step[3] - killed, 2),
        "drain_to_training_s": round(first_step[4] - drained, 2),
        "steps_replayed": {m["change"]: m["steps_replayed"] for m in memberships[1:]},
        "tokens_per_s": {world: rates[world] for world in sorted(rates)},
        "global_batch_tokens": GLOBAL_BATCH * BLOCK,
        "cpu_cores": os.cpu_count(),
        "note": "3 single-threaded workers on 2 cores oversubscribe the machine; world 3 is not a scaling number",
    }


def _epoch_steps(chain: list[dict], epoch: int) -> list[dict]:
    """The trainer_step receipts of membership epoch ``epoch`` (between its membership receipt and the next)."""
    current, steps = 0, []
    for receipt in chain:
        if receipt["kind"] == "membership":
            current = receipt["body"]["epoch"]
        elif receipt["kind"] == "trainer_step" and current == epoch:
            steps.append(receipt)
    return steps


def _tokens_per_s(steps: list[dict]) -> float:
    """Global tokens per second from the median step interval, after the first 10 steps of the epoch."""
    times = [receipt["created_at"] for receipt in steps[10:]]
    intervals = [b - a for a, b in itertools.pairwise(times) if b > a]
    return round(GLOBAL_BATCH * BLOCK / statistics.median(intervals), 1) if intervals else 0.0


def _node_processes(node: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"LIT_PSION_NODE_ID={node}".encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    main()
