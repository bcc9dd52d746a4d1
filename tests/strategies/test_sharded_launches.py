"""Sharded runs across launch shapes: a checkpoint resumed at another world size, and two torchrun nodes.

Slow: each test is several real multi-process fits (see test_sharded.py for the strategy's own tests).
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_psion.cli import main
from lit_psion.core import RunLayout
from lit_psion.core.checkpoint import MANIFEST_FILE, verify_checkpoint
from lit_psion.core.pointer import write_pointer
from tests.helpers import REPO_ROOT, TINY, subprocess_env
from tests.strategies import test_sharded
from tests.strategies.test_sharded import (
    DATA,
    FSDP,
    SHARD_FILES,
    N,
    assert_same_training,
    run_dir,
    run_fit,
    sharded_state,
    steps,
)

uninterrupted = test_sharded.uninterrupted  # the uninterrupted world-2 run, built once for this module too


@pytest.mark.slow  # default-suite budget: three multi-process fits
def test_a_world_2_sharded_checkpoint_resumes_at_world_1_on_the_same_global_batches(tmp_path: Path) -> None:
    """DCP reshards the 2 shards for 1 rank; the cursor is global, so the data and the math carry on unchanged.

    No dropout: each rank draws its own dropout masks, so they differ with the world size by design.
    """
    no_dropout = (*DATA, "--model.init_args.decoder.dropout", "0.0")
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    for root, steps_, strategy, more in ((reference, N, FSDP, ()), (interrupted, 6, FSDP, ()),
                                         (interrupted, N, (*FSDP[:-1], "1"), ("--ckpt_path", "last"))):  # fmt: skip
        result = run_fit(root, "--trainer.max_steps", str(steps_), *more, strategy=strategy, data=no_dropout)
        assert result.returncode == 0, result.stderr[-3000:]
    run, expected_run = run_dir(interrupted), run_dir(reference)
    assert {p.name for p in (run / "checkpoints" / "step-000012").iterdir()} == {
        "__0_0.distcp", ".metadata", "trainer_state.pt", MANIFEST_FILE}  # written by the one rank  # fmt: skip
    ours, theirs = steps(run), steps(expected_run)
    assert sorted(ours) == list(range(1, N + 1))
    assert [ours[s]["batch_digest"] for s in ours] == [theirs[s]["batch_digest"] for s in ours]
    torch.testing.assert_close(torch.tensor([ours[s]["loss"] for s in ours]),
                               torch.tensor([theirs[s]["loss"] for s in ours]), rtol=1e-4, atol=1e-5)  # fmt: skip
    (tensors, state), (expected, _) = (sharded_state(r / "checkpoints" / "step-000012") for r in (run, expected_run))
    assert state["global_step"] == N and tensors.keys() == expected.keys()
    for name, tensor in expected["state_dict"].items():  # the same model, up to the order of the reductions
        torch.testing.assert_close(tensors["state_dict"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def _two_torchrun_nodes(root: Path, *args: str, per_node: tuple[tuple[str, ...], ...] = ((), ()), code: int = 0,
                        engine: tuple[str, ...] = ("--config", "configs/overlays/fsdp.yaml"),
                        refusal: str = "do not all start from rank 0's") -> dict[str, str]:  # fmt: skip
    """One ``fit`` as two torchrun nodes of one process each (two agents on localhost, as on two machines), with
    no ``LIT_PSION_RUN_ID``, each node given ``args`` and its ``per_node`` ones, each worker expected to exit ``code``
    (with ``refusal`` in its output if not 0); returns the run id each rank trained, by rank."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_ids = root.parent / f"{root.name}-run-ids-{port}"
    run_ids.mkdir()
    env = subprocess_env(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), LIT_PSION_TEST_RUN_IDS=str(run_ids))
    env.pop("LIT_PSION_RUN_ID", None)
    logs = [root.parent / f"{root.name}-node{node}-{port}.log" for node in (0, 1)]
    agents = []
    # The overlay's devices: 2 is Lightning's launcher's; torchrun's shape wins.
    for node, (log, own) in enumerate(zip(logs, per_node, strict=True)):
        with open(log, "w") as out:
            agents.append(subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                 "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "lit_psion",
                 "fit", "--config", TINY, *engine, "--trainer.accelerator", "cpu",
                 *DATA, "--trainer.default_root_dir", str(root),
                 *args, "--trainer.callbacks+=tests.strategies.run_ids.RecordRunId", *own],  # after a --config
                env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
            ))  # fmt: skip
    for agent, log in zip(agents, logs, strict=True):
        assert agent.wait(timeout=400) == (1 if code else 0), log.read_text()[-3000:]  # an agent's failure is 1
    for log in logs if code else ():  # its worker's own exit code is in its report
        assert f"exitcode  : {code} " in log.read_text() and refusal in log.read_text(), log.read_text()[-6000:]
    return {path.name: path.read_text() for path in run_ids.iterdir()}


@pytest.mark.slow  # default-suite budget: two launches of two torchrun agents
def test_two_torchrun_nodes_write_one_sharded_checkpoint_and_resume_it_bitwise(
    tmp_path: Path, uninterrupted: Path
) -> None:
    """Each node's rank is local rank 0: shards, digests and the seal must follow the global rank.

    Without ``LIT_PSION_RUN_ID`` each process plans its own run id: rank 1 must still train rank 0's run, and
    must not start from a checkpoint other than rank 0's.
    """
    trained = _two_torchrun_nodes(tmp_path, "--trainer.max_steps", "6")
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [run_dir(tmp_path).name], "one run for both nodes"
    assert trained == {"rank0": run_dir(tmp_path).name, "rank1": run_dir(tmp_path).name}
    assert {p.name for p in (run_dir(tmp_path) / "checkpoints" / "step-000006").iterdir()} == {
        *SHARD_FILES, MANIFEST_FILE}  # fmt: skip
    run = run_dir(tmp_path)
    before = (run / "run.json").read_bytes(), (run / "receipts.jsonl").read_bytes()
    older = str(run / "checkpoints" / "step-000003")  # node 1 given another checkpoint: both refuse, touch nothing
    _two_torchrun_nodes(tmp_path, "--trainer.max_steps", str(N), per_node=(("--ckpt_path", "last"),
                        ("--ckpt_path", older)), code=4)  # fmt: skip
    assert ((run / "run.json").read_bytes(), (run / "receipts.jsonl").read_bytes()) == before
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [run.name]
    # Node 1 sees stale storage: a copy of the runs directory from before step 6 was written (its pointer at step 3).
    stale = tmp_path.parent / f"{tmp_path.name}-stale"
    shutil.copytree(tmp_path, stale)
    stale_layout = RunLayout.of(stale / run.name)
    shutil.rmtree(stale_layout.checkpoints / "step-000006")
    write_pointer(stale_layout, verify_checkpoint(stale_layout.checkpoints / "step-000003"))
    _two_torchrun_nodes(tmp_path, "--trainer.max_steps", str(N), "--ckpt_path", "last",
                        per_node=((), ("--trainer.default_root_dir", str(stale))), code=4)  # fmt: skip
    assert ((run / "run.json").read_bytes(), (run / "receipts.jsonl").read_bytes()) == before
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [run.name]
    _two_torchrun_nodes(tmp_path, "--trainer.max_steps", str(N), "--ckpt_path", "last")
    assert main(["ckpt", "verify", str(run_dir(tmp_path))]) == 0
    assert_same_training(run_dir(tmp_path), uninterrupted)


@pytest.mark.slow  # default-suite budget: a launch of two torchrun agents
def test_ranks_that_see_different_last_checkpoints_refuse_to_restore_them(tmp_path: Path) -> None:
    """A transactional restore loads the last durable checkpoint on every rank: node 1, whose runs directory is
    another (storage not shared), finds none while rank 0 finds step 6; both stop with exit 4 at the restore,
    rather than going on from different weights."""
    poison = tmp_path.parent / f"{tmp_path.name}-poison.json"
    poison.write_text(json.dumps({"trainer": {"callbacks": [{
        "class_path": "tests.strategies.regression.PoisonGradients", "init_args": {"steps": [5, 6, 7]}}]}}))
    _two_torchrun_nodes(tmp_path, "--trainer.max_steps", str(N), "--config", str(poison),
                        per_node=((), ("--trainer.default_root_dir", str(tmp_path.parent / f"{tmp_path.name}-other"))),
                        code=4, engine=("--trainer.strategy", "transactional_ddp"),
                        refusal="do not all see the same last durable checkpoint")  # fmt: skip
    run = run_dir(tmp_path)
    decisions = [json.loads(line)["body"] for line in (run / "receipts.jsonl").read_text().splitlines()
                 if json.loads(line)["kind"] == "transaction"]  # fmt: skip
    assert [d["step"] for d in decisions] == [1, 2, 3, 4, 5, 6]  # step 7 (the restore) is not receipted
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    assert main(["receipts", "verify", str(run)]) == 0


@pytest.mark.slow  # default-suite budget: a launch of two torchrun agents
@pytest.mark.parametrize("setting", [("--model.init_args.optimizer.lr", "0.1"), ("--trainer.gradient_clip_val", "0.5"),
                                     ("--data.batch_size", "4")])  # fmt: skip
def test_a_node_with_other_training_settings_is_refused_before_it_trains(tmp_path: Path, setting: tuple) -> None:
    """Each rank steps its own optimizer on the averaged gradients: a node with another learning rate or clipping
    would drift from the others without a word, and one with another global batch (that its world size divides)
    would slice other batches and wait in other collectives. Paths and devices may differ by node; these may not."""
    _two_torchrun_nodes(tmp_path, "--trainer.max_steps", "3", per_node=((), setting), code=2,
                        engine=("--trainer.strategy", "ddp"),
                        refusal="do not all train with rank 0's settings (")  # fmt: skip
    assert not list(tmp_path.glob("*/checkpoints/step-*")), "nothing was trained"


def _exit_seen_at(log: Path) -> datetime.datetime:
    """When the node's agent saw its worker fail (the agent's own ``E... failed (exitcode: N)`` line)."""
    stamp = re.search(r"^E(\d{4} \d{2}:\d{2}:\d{2}\.\d+) .*failed \(exitcode", log.read_text(), re.MULTILINE)
    assert stamp is not None, log.read_text()[-3000:]
    return datetime.datetime.strptime(stamp.group(1), "%m%d %H:%M:%S.%f")


@pytest.mark.slow  # default-suite budget: a launch of two torchrun agents
def test_ranks_that_stop_with_one_verdict_leave_together(tmp_path: Path) -> None:
    """Rank 0 must not leave while rank 1 is still on its way to the same verdict: its exit closes the connections
    rank 1's process group may still be using, and gloo then aborts rank 1 (SIGABRT, its exit code lost), as a
    CI run likely showed. Rank 1 is held 6 s on its way out (under the 10 s bound); rank 0 waits for it at the
    launch's store."""
    config = tmp_path.parent / f"{tmp_path.name}-config.json"
    config.write_text(json.dumps({"trainer": {"callbacks": [
        {"class_path": "tests.strategies.regression.PoisonGradients", "init_args": {"steps": [5, 6, 7]}},
        {"class_path": "tests.strategies.regression.SlowToStop", "init_args": {"rank": 1, "seconds": 6.0}}]}}))
    _two_torchrun_nodes(tmp_path, "--trainer.max_steps", str(N), "--config", str(config),
                        per_node=((), ("--trainer.default_root_dir", str(tmp_path.parent / f"{tmp_path.name}-other"))),
                        code=4, engine=("--trainer.strategy", "transactional_ddp"),
                        refusal="do not all see the same last durable checkpoint")  # fmt: skip
    rank_0, rank_1 = (_exit_seen_at(log) for log in sorted(tmp_path.parent.glob(f"{tmp_path.name}-node*.log")))
    assert rank_0 >= rank_1 - datetime.timedelta(seconds=2.5), (rank_0, rank_1)  # each exit's own teardown varies
