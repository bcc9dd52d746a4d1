"""Sessions (seed 000): do online updates help under drift, and leave a model alone without it?

One base world model, then one session per drift strength (``--mus``, 0 being the no-drift control),
each run online for ``--steps`` transitions with the same seed, through the real
``python -m lit_psion session`` commands. For every session the prequential curves a run writes (the
session's ``metrics.json``): the base model, the session without updates, the session with updates
(what it predicts with: its served weights), and its learner, as the mean one-step MSE over the whole
run and over its last quarter. ``--gate-chunks 0`` runs seed 000's sessions, without the promotion gate.

Goals: under drift, updates lower the error (``with_update / no_update`` < 1); without drift they
do not hurt (``no_drift_update_ratio`` = with_update / no_update on the control <= 1.05).

    python benchmarks/sessions.py
    python benchmarks/sessions.py --mus 0 0.03 0.12 --steps 1200

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NO_DRIFT_GOAL = 1.05


def session(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, "-m", "lit_psion", "session", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"session {args[0]} failed ({result.returncode}): {result.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mus", type=float, nargs="+", default=[0.0, 0.06, 0.12], help="drift strengths (0: control)")
    parser.add_argument("--steps", type=int, default=600, help="transitions per session run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pretrain-steps", type=int, default=500)
    parser.add_argument("--gate-chunks", type=int, default=2, help="the sessions' promotion gate (0: none, seed 000)")
    args = parser.parse_args()
    curves = {}
    with tempfile.TemporaryDirectory(prefix="lit_psion_sessions_") as tmp:
        root = ("--artifacts_root", tmp)
        session("init-base", *root, "--pretrain_steps", str(args.pretrain_steps), "--pretrain_batch", "32",
                "--pretrain_seq", "32")  # fmt: skip
        for index, mu in enumerate(args.mus):
            name = f"mu{index}"
            session("new", *root, "--session_id", name, "--mu", str(mu), "--grad_norm_max", "20",
                    "--gate_chunks", str(args.gate_chunks))  # fmt: skip
            session("run", *root, "--session_id", name, "--steps", str(args.steps), "--seed", str(args.seed))
            metrics = json.loads((Path(tmp) / "sessions" / name / "metrics.json").read_text())  # the run's
            curves[str(mu)] = {
                "mean": {k.removeprefix("mse_"): round(v, 7) for k, v in metrics["mean"].items()},
                "final": {k.removeprefix("mse_"): round(v, 7) for k, v in metrics["final"].items()},
                "updates": metrics["updates"], "rollbacks": metrics["rollbacks"], "promotions": metrics["promotions"],
                "update_ratio_final": round(metrics["final"]["mse_with_update"] / metrics["final"]["mse_no_update"], 4),
            }  # fmt: skip
    control = curves.get("0.0")
    report = {
        "benchmark": "sessions",
        "steps": args.steps,
        "seed": args.seed,
        "gate_chunks": args.gate_chunks,
        "curves": curves,
        "no_drift_update_ratio": control["update_ratio_final"] if control else None,
        "no_drift_goal": NO_DRIFT_GOAL,
        "no_drift_meets_goal": control is not None and control["update_ratio_final"] <= NO_DRIFT_GOAL,
        "drift_updates_help": all(c["update_ratio_final"] < 1 for mu, c in curves.items() if float(mu) > 0),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
