"""The transactional strategy's state rides in the checkpoint: a stopped and resumed run is the uninterrupted one.

The rolling buffer (recently committed batches and the RNG states they trained with), the rollback
streak and the counters decide ``pre_loss``/``post_loss``, restores and stops. A run stopped at
step k (SIGKILL, or ``max_steps``) and continued with ``--ckpt_path last`` must make every later
decision with the same numbers as the uninterrupted run and end bitwise equal to it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from lit_psion.cli import main
from lit_psion.core.run import read_latest
from lit_psion.strategies.transactional import STATE_KEY
from tests.helpers import assert_tree_equal, fit, fit_subprocess, latest_checkpoint

N = 10
DATA = ("--data.sample_stride", "200", "--model.init_args.optimizer.decay_steps", str(N))  # 5 batches per epoch
POISONED = [6, 7, 8]
"""With restore_after 3, this streak crosses the checkpoint at step 6 and restores at step 8."""
CHECKPOINT_STEP = 6  # checkpoints every 3 steps (fixtures/tiny.yaml): both stops resume from step 6


def _config(path: Path, buffer_len: int, rollback: bool, kill_at: int | None) -> str:
    callbacks = []
    if rollback:
        callbacks.append({"class_path": "tests.strategies.regression.PoisonGradients",
                          "init_args": {"steps": POISONED}})  # fmt: skip
    if kill_at is not None:
        callbacks.append({"class_path": "tests.helpers.KillAt", "init_args": {"step": kill_at}})
    policy = {"buffer_len": buffer_len, "restore_after": 3, "stop_after": 6, "rollback_tol": 0.2}
    strategy = {"class_path": "lit_psion.strategies.TransactionalStrategy", "init_args": {"policy": policy}}
    path.write_text(json.dumps({"trainer": {"strategy": strategy, "callbacks": callbacks}}))
    return str(path)


def _decisions(root: Path) -> dict[int, dict]:
    """Each step's transaction receipt; a step replayed after a stop replaces the receipt it had before."""
    run = root / read_latest(root)
    bodies = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    return {r["body"]["step"]: r["body"] for r in bodies if r["kind"] == "transaction"}


_REFERENCES: dict[tuple[int, bool], tuple[dict, dict]] = {}


def _uninterrupted(tmp_path_factory: pytest.TempPathFactory, buffer_len: int, rollback: bool) -> tuple[dict, dict]:
    if (buffer_len, rollback) not in _REFERENCES:
        root = tmp_path_factory.mktemp(f"full-{buffer_len}-{rollback}")
        config = _config(root / "tx.json", buffer_len, rollback, kill_at=None)
        assert fit(*DATA, "--config", config, "--trainer.default_root_dir", str(root), "--trainer.max_steps",
                   str(N)) == 0  # fmt: skip
        _REFERENCES[buffer_len, rollback] = latest_checkpoint(root), _decisions(root)
    return _REFERENCES[buffer_len, rollback]


STOPS = [pytest.param("sigkill-at-7", marks=pytest.mark.slow), "max_steps-6",  # killed: ~16 s
         "max_steps-7",  # a checkpoint off the schedule (as a SIGTERM pause writes): the restore at 8 loaded it
         pytest.param("sigkill-at-9", marks=pytest.mark.slow)]  # after the restore at 8 listed steps 6-8
"""Where the first fit stops: the first two resume from step 6, ``max_steps-7`` from its own checkpoint at step 7."""


@pytest.mark.parametrize("rollback", [False, True], ids=["all-commits", "rollback-streak-across-the-stop"])
@pytest.mark.parametrize("stop", STOPS)
@pytest.mark.parametrize("buffer_len", [1, 4])
def test_a_stopped_transactional_run_resumes_bitwise(
    buffer_len: int, stop: str, rollback: bool, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    reference, reference_decisions = _uninterrupted(tmp_path_factory, buffer_len, rollback)
    common = (*DATA, "--trainer.default_root_dir", str(tmp_path))
    if stop.startswith("sigkill-at-"):
        killed = _config(tmp_path / "killed.json", buffer_len, rollback, kill_at=int(stop.rsplit("-", 1)[1]))
        result = fit_subprocess(*common, "--config", killed, "--trainer.max_steps", str(N))
        assert result.returncode == -9, result.stderr[-2000:]
    else:
        stopped = _config(tmp_path / "stopped.json", buffer_len, rollback, kill_at=None)
        assert fit(*common, "--config", stopped, "--trainer.max_steps", stop.rsplit("-", 1)[1]) == 0
    at_stop = latest_checkpoint(tmp_path)
    assert at_stop["global_step"] == (7 if stop == "max_steps-7" else CHECKPOINT_STEP)
    if stop != "max_steps-7":
        assert len(at_stop[STATE_KEY]["ranks"][0]["buffer"]) == buffer_len - 1  # full: the next steps measure on it
    resume = _config(tmp_path / "resume.json", buffer_len, rollback, kill_at=None)
    assert fit(*common, "--config", resume, "--trainer.max_steps", str(N), "--ckpt_path", "last") == 0

    resumed = latest_checkpoint(tmp_path)
    assert resumed["global_step"] == N
    for key in ("state_dict", "optimizer_states", "lr_schedulers", STATE_KEY):
        assert_tree_equal(resumed[key], reference[key], key)
    decisions = _decisions(tmp_path)
    assert decisions == reference_decisions  # the same losses, decisions, reasons and actions at every step
    if rollback:  # the streak of steps 6-8 restored at 8 only because step 6 was counted across the stop
        assert [decisions[step]["action"] for step in POISONED] == [None, None, "restored:step-000006"]
    assert main(["doctor", str(tmp_path / read_latest(tmp_path))]) == 0  # the skip list the replay wrote again


def test_the_checkpointed_state_loads_with_weights_only(tmp_path: Path) -> None:
    config = _config(tmp_path / "tx.json", buffer_len=4, rollback=True, kill_at=None)
    assert fit(*DATA, "--config", config, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "7") == 0
    run = tmp_path / read_latest(tmp_path)
    state = torch.load(io.BytesIO((run / "checkpoints" / "step-000007" / "trainer_state.pt").read_bytes()),
                       weights_only=True)[STATE_KEY]  # fmt: skip
    (rank0,) = state["ranks"]
    assert (rank0["commits"], rank0["rolled_back"]) == (5, 2)
    assert rank0["rollbacks"]["nonfinite_grad"] == 2
    assert [entry["step"] for entry in rank0["streak"]] == [6, 7]
    assert [entry["reasons"] for entry in rank0["streak"]] == [["nonfinite_grad", "nonfinite_post_loss"]] * 2
    assert len(rank0["buffer"]) == 3 and all(entry["batch"]["input_ids"].device.type == "cpu"
                                             for entry in rank0["buffer"])  # fmt: skip


def test_a_new_run_from_another_runs_checkpoint_counts_only_its_own_decisions(tmp_path: Path) -> None:
    """The counters came with the checkpoint: a new run with 2 commits and no rollback of its own showed the
    source run's rollback in its commit rate."""
    from lit_psion.strategies.transactional import STATE_KEY

    source = tmp_path / "source"
    poisoned = _config(tmp_path / "tx.json", 1, rollback=False, kill_at=None)
    config = json.loads(Path(poisoned).read_text())
    config["trainer"]["callbacks"] = [{"class_path": "tests.strategies.regression.PoisonGradients",
                                       "init_args": {"steps": [2]}}]  # fmt: skip
    Path(poisoned).write_text(json.dumps(config))
    assert fit(*DATA, "--config", poisoned, "--trainer.default_root_dir", str(source), "--trainer.max_steps",
               "3") == 0  # fmt: skip
    assert latest_checkpoint(source)[STATE_KEY]["ranks"][0]["rolled_back"] == 1
    step = source / read_latest(source) / "checkpoints" / "step-000003"
    plain = _config(tmp_path / "plain.json", 1, rollback=False, kill_at=None)
    target = tmp_path / "target"
    assert fit(*DATA, "--config", plain, "--trainer.default_root_dir", str(target), "--trainer.max_steps", "5",
               "--ckpt_path", str(step)) == 0  # fmt: skip
    state = latest_checkpoint(target)[STATE_KEY]["ranks"][0]
    assert (state["commits"], state["rolled_back"]) == (2, 0)


def test_a_stops_streak_stays_skipped_by_every_later_resume(tmp_path: Path) -> None:
    """A resume kept the stopping streak's skip-list entries only while run.json said `diverged`: a resume that
    ended before reaching them (run.json then `completed`, or `paused`) left the next resume to train those
    batches again (and, with a longer streak, to stop on them again). The receipts record the stop; they decide."""
    config = json.loads(Path(_config(tmp_path / "tx.json", 1, rollback=False, kill_at=None)).read_text())
    config["trainer"]["strategy"]["init_args"]["policy"] |= {"restore_after": 3, "stop_after": 3}
    config["trainer"]["callbacks"] = [{"class_path": "tests.strategies.regression.PoisonGradients",
                                       "init_args": {"steps": [7, 8, 9]}}]  # fmt: skip  (the data of steps 7-9)
    (tmp_path / "tx.json").write_text(json.dumps(config))
    common = (*DATA, "--config", str(tmp_path / "tx.json"), "--trainer.default_root_dir", str(tmp_path / "runs"))
    assert fit(*common, "--trainer.max_steps", "12") == 7  # stopped at step 9, its streak 7-9 listed
    assert fit(*common, "--trainer.max_steps", "8", "--ckpt_path", "last") == 0  # from step 6: 7 and 8 skipped
    run = tmp_path / "runs" / read_latest(tmp_path / "runs")
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert fit(*common, "--trainer.max_steps", "12", "--ckpt_path", "last") == 0  # from step 8
    decisions = _decisions(tmp_path / "runs")
    assert [decisions[step]["action"] for step in (7, 8, 9)] == ["skipped"] * 3  # step 9 was trained (rolled back)
    assert [decisions[step]["decision"] for step in (10, 11, 12)] == ["commit"] * 3
    assert main(["doctor", str(run)]) == 0
