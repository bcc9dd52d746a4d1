"""Transactional steps under FSDP2 (``TransactionalShardedStrategy``) at world 2 on CPU.

Each rank snapshots and restores its own shards, every rank takes the same decision, a restore
reads the run's last durable sharded checkpoint, and the strategy's state rides in the sharded
checkpoint, so a stopped run resumes to the uninterrupted one bitwise. Every run is a real
``python -m lit_psion fit`` with 2 gloo ranks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lit_psion.cli import main
from lit_psion.core import RunLayout
from lit_psion.core.pointer import read_pointer
from lit_psion.strategies.transactional import STATE_KEY
from tests.helpers import assert_tree_equal
from tests.strategies.test_sharded import DATA, run_dir, run_fit, sharded_state, steps

N = 12
POISONED = [6, 7, 8]
"""Gradients made NaN on these steps: with restore_after 3 the streak crosses the checkpoint at step 6 and
restores it at step 8 (it holds the weights after step 5, since step 6 itself rolled back)."""
WORLD_2 = ("--trainer.accelerator", "cpu", "--trainer.devices", "2")


def _strategy(root: Path, engine: str, *, kill_at: int | None = None, record: Path | None = None,
              poison_rank: int | None = None) -> tuple:  # fmt: skip
    """The command-line arguments of a world-2 transactional run (buffer_len 4) with NaN gradients at POISONED
    (on every rank, or on ``poison_rank`` alone)."""
    policy = {"buffer_len": 4, "restore_after": 3, "stop_after": 6, "rollback_tol": 0.2}
    strategy = {"class_path": f"lit_psion.strategies.Transactional{engine}Strategy",
                "init_args": {"policy": policy, "process_group_backend": "gloo"}}  # fmt: skip
    callbacks: list[dict[str, Any]] = [{"class_path": "tests.strategies.regression.PoisonGradients",
                                        "init_args": {"steps": POISONED, "rank": poison_rank}}]  # fmt: skip
    if kill_at is not None:
        callbacks.append({"class_path": "tests.helpers.KillGroupAt", "init_args": {"step": kill_at}})
    if record is not None:
        callbacks.append({"class_path": "tests.strategies.shard_recorder.ShardRecorder",
                          "init_args": {"out": str(record)}})  # fmt: skip
    config = root.parent / f"{root.name}-{engine}-{kill_at}.json"
    config.write_text(json.dumps({"trainer": {"strategy": strategy, "callbacks": callbacks}}))
    return ("--config", str(config), *WORLD_2)


def decisions(run: Path) -> dict[int, dict[str, Any]]:
    """Each step's transaction receipt (a step trained again after a resume replaces the one it had)."""
    chain = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    return {r["body"]["step"]: r["body"] for r in chain if r["kind"] == "transaction"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted transactional FSDP2 run (checkpoints every 3 steps: the streak crosses step 6's)."""
    root = tmp_path_factory.mktemp("tx-sharded")
    result = run_fit(root, "--trainer.max_steps", str(N), strategy=_strategy(root, "Sharded"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir(root)


def test_one_ranks_nan_rolls_back_every_ranks_own_shards_bitwise_and_restore_loads_the_sharded_checkpoint(
    tmp_path: Path,
) -> None:
    """Checkpoints every 4 steps: step 5 commits after step-000004, so the restore at step 8 is told apart from
    the rollbacks of steps 6-7 (which leave the weights step 5 left)."""
    record = tmp_path / "shards"
    data = (*DATA[:-2], "--checkpoint.every_n_train_steps", "4")
    result = run_fit(tmp_path / "runs", "--trainer.max_steps", str(N), data=data,
                     strategy=_strategy(tmp_path / "runs", "Sharded", record=record, poison_rank=1))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = run_dir(tmp_path / "runs")
    steps_ = decisions(run)
    assert [s for s in steps_ if steps_[s]["decision"] == "rollback"] == POISONED  # rank 1's NaN: every rank
    assert all("nonfinite_grad" in steps_[s]["reasons"] for s in POISONED)
    assert [steps_[s]["action"] for s in POISONED] == [None, None, "restored:step-000004"]
    for rank in (0, 1):
        shards = torch.load(record / f"rank{rank}.pt", weights_only=True)
        before, after = shards["before"], shards["after"]
        assert sorted(after) == list(range(1, N + 1))
        for step in (6, 7):  # rolled back: this rank's shards and optimizer state as they were before the step
            assert_tree_equal(after[step], before[step], f"rank {rank} step {step}")
        assert_tree_equal(after[8], after[4], f"rank {rank} step 8")  # step-000004's shards and optimizer state
        assert not torch.equal(after[8]["params"][0], after[5]["params"][0])
        assert not torch.equal(after[9]["params"][0], after[8]["params"][0])  # training goes on from there
        assert all(torch.isfinite(p).all() for p in after[N]["params"])
    skip_list = json.loads((run / "skip_list.json").read_text())
    assert sorted({entry["step"] for entry in skip_list["batches"]}) == POISONED


def test_transactions_under_fsdp2_decide_as_under_ddp_within_fp_tolerance(
    reference: Path, tmp_path: Path
) -> None:
    result = run_fit(tmp_path, "--trainer.max_steps", str(N), strategy=_strategy(tmp_path, "DDP"))
    assert result.returncode == 0, result.stderr[-3000:]
    sharded, ddp = decisions(reference), decisions(run_dir(tmp_path))
    assert sorted(sharded) == sorted(ddp) == list(range(1, N + 1))
    for step in sharded:
        ours, theirs = sharded[step], ddp[step]
        assert (ours["decision"], ours["reasons"], ours["action"], ours["batch_digest"]) == (
            theirs["decision"], theirs["reasons"], theirs["action"], theirs["batch_digest"]), step  # fmt: skip
        for field in ("pre_loss", "post_loss", "grad_norm"):  # the whole model's norm: the shards' norms reduced
            if theirs[field] is None:
                assert ours[field] is None, (step, field)
            else:
                assert ours[field] == pytest.approx(theirs[field], rel=1e-4, abs=1e-6), (step, field)


@pytest.mark.parametrize(("stop", "at"), [("max_steps-7", 7), pytest.param("sigkill-at-7", 6, marks=pytest.mark.slow)])
def test_a_stopped_transactional_fsdp2_run_resumes_bitwise(stop: str, at: int, reference: Path,
                                                           tmp_path: Path) -> None:  # fmt: skip
    """Stopped mid-streak (before the restore at step 8 writes the skip list): the resumed run must carry each
    rank's buffer and the streak on from the sharded checkpoint to make the same decisions."""
    if stop == "sigkill-at-7":
        killed = run_fit(tmp_path, "--trainer.max_steps", str(N), strategy=_strategy(tmp_path, "Sharded", kill_at=7))
        assert killed.returncode == -9, killed.stderr[-3000:]
    else:
        stopped = run_fit(tmp_path, "--trainer.max_steps", "7", strategy=_strategy(tmp_path, "Sharded"))
        assert stopped.returncode == 0, stopped.stderr[-3000:]
    run = run_dir(tmp_path)
    assert read_pointer(RunLayout.of(run)).step == at
    _, state = sharded_state(run / "checkpoints" / f"step-{at:06d}")
    ranks = state[STATE_KEY]["ranks"]
    assert [len(rank["buffer"]) for rank in ranks] == [3, 3]  # each rank's own last committed batches
    first_ids = [rank["buffer"][0]["batch"]["sample_ids"].tolist() for rank in ranks]
    assert first_ids[0] != first_ids[1]
    assert [len(rank["streak"]) for rank in ranks] == [at - 5] * 2  # the rolled-back steps since step 5
    resumed = run_fit(tmp_path, "--trainer.max_steps", str(N), "--ckpt_path", "last",
                      strategy=_strategy(tmp_path, "Sharded"))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_dir(tmp_path) == run
    (tensors, state), (expected, expected_state) = (sharded_state(r / "checkpoints" / f"step-{N:06d}")
                                                    for r in (run, reference))  # fmt: skip
    assert_tree_equal(tensors, expected, "shards")  # model and optimizer, bitwise
    assert_tree_equal(state[STATE_KEY], expected_state[STATE_KEY], "transaction state")
    assert state["lr_schedulers"] == expected_state["lr_schedulers"]
    ours, theirs = steps(run), steps(reference)  # the committed steps
    assert {s: (b["batch_digest"], b["loss"]) for s, b in ours.items()} == {
        s: (b["batch_digest"], b["loss"]) for s, b in theirs.items()}  # fmt: skip
    resumed_decisions, expected_decisions = decisions(run), decisions(reference)
    # the restore at step 8 reads the newest checkpoint on the schedule, as the uninterrupted run did (it read the
    # stop's own step-000007 at max_steps 7: the same weights here only because step 7 rolled back)
    assert resumed_decisions[8]["action"] == expected_decisions[8]["action"] == "restored:step-000006"
    assert resumed_decisions == expected_decisions
    assert main(["receipts", "verify", str(run)]) == 0


def test_the_fsdp_overlay_on_a_preset_that_prints_a_sample_ends_with_the_sample(tmp_path: Path) -> None:
    """GenerateSample runs the model at the end of fit: under FSDP2 every rank must run it (each forward gathers
    the shards), and rank 0 prints it; rank 0 alone used to wait for rank 1's shards and the fit failed."""
    sample = {"class_path": "lit_psion.callbacks.GenerateSample", "init_args": {"prompt": "the ", "max_new_tokens": 8}}
    config = tmp_path / "sample.json"
    config.write_text(json.dumps({"trainer": {"callbacks": [sample]}}))
    result = run_fit(tmp_path / "runs", "--trainer.max_steps", "2", "--config", str(config), data=DATA)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("sample") == 1 and "the " in result.stdout
