"""Sessions' promotion gate (issue 17 item 3): updates help under drift and do not hurt without it.

The three curves of seed 000 (base, session without updates, session with updates) are pinned on a
no-drift control and two drift strengths; the gate's rule and its persistence are tested directly.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.sessions.modules import PromotionGate

BASE = ["--pretrain_steps", "500", "--pretrain_batch", "32", "--pretrain_seq", "32"]
STEPS = 480  # 15 chunks of 32


def session(*args: str) -> int:
    return main(["session", *args])


def final_ratio(root: Path, session_id: str) -> float:
    final = read_json(root / "sessions" / session_id / "metrics.json")["final"]
    return final["mse_with_update"] / final["mse_no_update"]


@pytest.fixture(scope="module")
def curves(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One base; sessions at mu 0 (control), 0.06 and 0.12 with the default gate, and the control without it."""
    root = tmp_path_factory.mktemp("curves") / "artifacts"
    assert session("init-base", "--artifacts_root", str(root), *BASE) == 0
    for session_id, mu, gate in (("mu0", "0", "2"), ("mu006", "0.06", "2"), ("mu012", "0.12", "2"),
                                 ("mu0_nogate", "0", "0")):  # fmt: skip
        assert session("new", "--artifacts_root", str(root), "--session_id", session_id, "--mu", mu,
                       "--grad_norm_max", "20", "--gate_chunks", gate) == 0  # fmt: skip
        assert session("run", "--artifacts_root", str(root), "--session_id", session_id, "--steps", str(STEPS)) == 0
    return root


def test_without_drift_updates_do_not_hurt(curves: Path) -> None:
    assert final_ratio(curves, "mu0") <= 1.05
    # the gate is what keeps them from hurting: the same control without it is far worse
    assert final_ratio(curves, "mu0_nogate") > 1.5


@pytest.mark.parametrize(("session_id", "at_most"), [("mu006", 0.5), ("mu012", 0.3)])
def test_under_drift_updates_help(curves: Path, session_id: str, at_most: float) -> None:
    metrics = read_json(curves / "sessions" / session_id / "metrics.json")
    assert final_ratio(curves, session_id) <= at_most
    assert metrics["promotions"] >= 1 and metrics["rollbacks"] == 0
    base, no_update = metrics["final"]["mse_base"], metrics["final"]["mse_no_update"]
    assert base == no_update  # a root session starts from zero plastic weights: its own first state is the base


def test_each_promotion_leaves_a_receipt_with_the_window_scores(curves: Path) -> None:
    metrics = read_json(curves / "sessions" / "mu012" / "metrics.json")
    (run,) = (curves / "sessions" / "mu012" / "runs").iterdir()
    lines = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    promotions = [line["body"] for line in lines if line["kind"] == "policy_promotion"]
    assert len(promotions) == metrics["promotions"] == len(metrics["promoted_at"])
    for receipt in promotions:
        assert receipt["stage_id"] == "session" and receipt["decision"] == "promote"
        assert receipt["scores"]["learner_mse"] < receipt["scores"]["served_mse"]
        assert receipt["previous_revision"] != receipt["candidate_revision"]
    revisions = [(r["previous_revision"], r["candidate_revision"]) for r in promotions]
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(revisions))  # a chain


def test_the_control_serves_what_it_started_with_and_learns_aside(curves: Path) -> None:
    metrics = read_json(curves / "sessions" / "mu0" / "metrics.json")
    state = load_file(curves / "sessions" / "mu0" / "plastic_state.safetensors")
    assert metrics["promotions"] == 0
    assert torch.count_nonzero(state["served.P_A"]) == 0 and torch.count_nonzero(state["P_A"]) > 0
    assert metrics["final"]["mse_learner"] > metrics["final"]["mse_with_update"]


def test_the_served_weights_persist_across_runs_and_forks(curves: Path, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(curves, root)
    before = load_file(root / "sessions" / "mu012" / "plastic_state.safetensors")
    assert not torch.equal(before["served.P_A"], before["P_A"])  # promoted, then trained on
    assert session("fork", "--artifacts_root", str(root), "--parent_session_id", "mu012",
                   "--child_session_id", "child") == 0  # fmt: skip
    assert session("run", "--artifacts_root", str(root), "--session_id", "child", "--steps", "32") == 0
    (run,) = (root / "sessions" / "child" / "runs").iterdir()
    first = (run / "per_step.csv").read_text().splitlines()[1].split(",")
    header = (run / "per_step.csv").read_text().splitlines()[0].split(",")
    row = dict(zip(header, map(float, first), strict=True))
    # the first transition is predicted by the served weights the parent left, not by its learner
    served_error = _error(root, before, "served.", step_seed=1)
    learner_error = _error(root, before, "", step_seed=1)
    assert row["mse_with_update"] == pytest.approx(served_error, rel=1e-5)
    assert row["mse_learner"] == pytest.approx(learner_error, rel=1e-5)
    assert served_error != pytest.approx(learner_error, rel=1e-3)


def _error(root: Path, state: dict[str, torch.Tensor], prefix: str, step_seed: int) -> float:
    """The first transition's squared error of the child's environment under ``state``'s ``prefix`` weights."""
    from lit_psion.sessions.store import Store
    from lit_psion.sessions.world import Environment

    store = Store(root)
    config, base = store.base_config(), store.base_weights()
    env = Environment(config, read_json(root / "sessions" / "child" / "meta.json")["mu"])
    z, u = env.stream(32, torch.Generator().manual_seed(step_seed))
    A = base["A_hat"] + state[prefix + "P_A"]
    B = base["B_hat"] + state[prefix + "P_B"]
    return float(((z[0] @ A.T + u[0] @ B.T - z[1]) ** 2).mean())


@pytest.mark.parametrize(
    ("chunks", "errors", "promoted_after"),
    [
        (0, [(1.0, 0.1)] * 3, None),  # no gate: never promotes
        (2, [(1.0, 0.1)], None),  # the window is not full yet
        (2, [(1.0, 0.1), (1.0, 0.1)], 2),  # better on both chunks
        (2, [(1.0, 2.0), (1.0, 0.5)], None),  # better on the last one only, worse over the window
        (2, [(1.0, 1.0), (1.0, 1.0)], None),  # a tie does not promote
        (2, [(1.0, 2.0), (1.0, 0.1), (1.0, 0.1)], 3),  # the window slides past the bad chunk
        (3, [(1.0, 0.1), (1.0, 0.1), (1.0, 1.5)], 3),  # summed over the window: 1.7 < 3
    ],
)
def test_the_gate_promotes_only_when_the_learner_predicted_the_window_better(
    chunks: int, errors: list[tuple[float, float]], promoted_after: int | None
) -> None:
    gate = PromotionGate(chunks, {"P_A": torch.zeros(1)})
    promoted = None
    for index, (served, learner) in enumerate(errors, start=1):
        if gate.score(torch.tensor([served]), torch.tensor([learner])) is not None and promoted is None:
            promoted = index
    assert promoted == promoted_after


def test_a_promotion_restarts_the_window() -> None:
    gate = PromotionGate(2, {"P_A": torch.zeros(1)})
    for _ in range(2):
        scores = gate.score(torch.tensor([1.0]), torch.tensor([0.1]))
    assert scores == pytest.approx({"served_mse": 2.0, "learner_mse": 0.2})
    gate.promote({"P_A": torch.ones(1)})
    assert gate.served["P_A"].item() == 1.0
    assert gate.score(torch.tensor([1.0]), torch.tensor([0.1])) is None  # one chunk since the promotion


def test_a_session_made_before_the_gate_runs_without_one(curves: Path, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(curves, root)
    meta_path = root / "sessions" / "mu0" / "meta.json"
    meta = read_json(meta_path)
    del meta["settings"]["gate_chunks"]  # as `session new` wrote it before the gate existed
    meta_path.write_text(json.dumps(meta))
    assert session("run", "--artifacts_root", str(root), "--session_id", "mu0", "--steps", "64") == 0
    (run,) = (p for p in (root / "sessions" / "mu0" / "runs").iterdir() if p.name not in _runs(curves, "mu0"))
    lines = (run / "per_step.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    assert rows and all(row["mse_with_update"] == row["mse_learner"] for row in rows)  # it predicts as it learns


def _runs(root: Path, session_id: str) -> set[str]:
    return {p.name for p in (root / "sessions" / session_id / "runs").iterdir()}


def test_a_later_run_measures_no_update_against_what_the_session_served(curves: Path, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(curves, root)
    before = _runs(root, "mu012")
    assert session("run", "--artifacts_root", str(root), "--session_id", "mu012", "--steps", "32", "--seed", "7") == 0
    (run,) = (root / "sessions" / "mu012" / "runs" / name for name in _runs(root, "mu012") - before)
    lines = (run / "per_step.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, map(float, line.split(",")), strict=True)) for line in lines[1:]]
    # before anything is learned in this run, "no updates" is the served weights it started with, not the learner
    assert all(row["mse_no_update"] == row["mse_with_update"] for row in rows)
    assert any(row["mse_learner"] != row["mse_with_update"] for row in rows)


def test_the_gate_window_carries_over_between_short_runs(curves: Path, tmp_path: Path) -> None:
    """Runs of one chunk each can still promote: the window of --gate_chunks 2 fills across runs."""
    root = tmp_path / "artifacts"
    shutil.copytree(curves, root)
    assert session("new", "--artifacts_root", str(root), "--session_id", "short", "--mu", "0.12",
                   "--grad_norm_max", "20") == 0  # fmt: skip
    promotions = 0
    for seed in range(8):
        assert session("run", "--artifacts_root", str(root), "--session_id", "short", "--steps", "32",
                       "--seed", str(seed)) == 0  # fmt: skip
        promotions += read_json(root / "sessions" / "short" / "metrics.json")["promotions"]
    window = load_file(root / "sessions" / "short" / "plastic_state.safetensors")["gate.window"]
    assert promotions >= 1
    assert window.shape[1] == 2 and window.shape[0] <= 2
