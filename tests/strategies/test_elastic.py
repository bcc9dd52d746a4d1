"""ElasticMeshStrategy: each worker-group start is a membership epoch, receipted, resumed on its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from lit_psion.cli import main
from lit_psion.core import RunLayout, read_json, sha256_file
from lit_psion.core.lock import lock_holder
from lit_psion.core.membership import write_drain_requests
from lit_psion.core.run import read_latest
from tests.helpers import callbacks_config, fit, fit_subprocess

ELASTIC = ("--trainer.strategy", "elastic_mesh", "--trainer.devices", "1")


@pytest.fixture(autouse=True)
def _own_process_group(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh port per test (Lightning writes MASTER_PORT into the environment), no group left behind."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MASTER_PORT", str(probe.getsockname()[1]))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def memberships(layout: RunLayout) -> list[dict]:
    chain = [json.loads(line) for line in layout.receipts.read_text().splitlines()]
    return [receipt["body"] for receipt in chain if receipt["kind"] == "membership"]


def _fit(root: Path, node: str, steps: int, monkeypatch: pytest.MonkeyPatch, run_id: str | None = None) -> int:
    monkeypatch.setenv("LIT_PSION_NODE_ID", node)
    if run_id is not None:
        monkeypatch.setenv("LIT_PSION_RUN_ID", run_id)
    return fit("--trainer.default_root_dir", str(root), *ELASTIC, "--trainer.max_steps", str(steps))


def test_epochs_rise_by_one_per_start_and_each_change_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _fit(tmp_path, "node-a", 6, monkeypatch) == 0
    layout = RunLayout(tmp_path, read_latest(tmp_path))
    pointed = layout.checkpoint(6) / "manifest.json"
    assert read_json(pointed)["membership"] == {"epoch": 1, "nodes": {"node-a": "active"}, "world_size": 1}
    digest_6 = sha256_file(pointed)
    assert _fit(tmp_path, "node-a", 9, monkeypatch, run_id=layout.run_id) == 0  # resumes on its own: no --ckpt_path
    assert _fit(tmp_path, "node-b", 12, monkeypatch, run_id=layout.run_id) == 0
    start, restart, replace = memberships(layout)
    assert (start["epoch"], start["change"], start["previous_members"]) == (1, "start", {})
    assert (restart["epoch"], restart["change"]) == (2, "restart")
    assert restart["checkpoint_manifest_digest"] == digest_6 and restart["cursor"]["position"] > 0
    assert (replace["epoch"], replace["change"]) == (3, "replace")
    assert replace["previous_members"] == {"node-a": "active"}
    assert replace["members"] == {"node-a": "offline", "node-b": "active"}
    assert read_json(layout.membership)["epoch"] == 3
    steps = [json.loads(line)["body"]["step_out"] for line in layout.receipts.read_text().splitlines()
             if '"trainer_step"' in line]  # fmt: skip
    assert steps == list(range(1, 13)), "every step trained once across the three epochs"


def test_steps_trained_past_the_checkpoint_before_a_crash_are_counted_as_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIT_PSION_NODE_ID", "node-a")
    monkeypatch.setenv("LIT_PSION_RUN_ID", "mesh-run")
    kill = callbacks_config(tmp_path / "kill.json", ("KillAt", {"step": 5}))
    result = fit_subprocess("--config", kill, "--trainer.default_root_dir", str(tmp_path), *ELASTIC)  # (a mesh
    # writes each step's receipt as the step ends, whatever --receipts.flush_every_n_steps says)
    assert result.returncode == -9, result.stderr[-2000:]
    layout = RunLayout(tmp_path, "mesh-run")
    assert read_json(layout.pointer)["step"] == 3
    assert _fit(tmp_path, "node-a", 12, monkeypatch) == 0
    restart = memberships(layout)[-1]
    assert (restart["epoch"], restart["change"], restart["steps_replayed"]) == (2, "restart", 1)


def test_a_run_id_that_is_not_a_plain_name_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    capsys.readouterr()
    assert _fit(tmp_path, "node-a", 3, monkeypatch, run_id="../escape") == 2
    assert "is not a run id" in capsys.readouterr().err


def _torchrun_node(root: Path, node: str, rank: int, nodes: int, port: int, steps: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIT_PSION_NODE_ID": node, "LIT_PSION_RUN_ID": "mesh-run"}
    env.pop("MASTER_PORT", None)
    env.pop("MASTER_ADDR", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", "1",
               "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
               "-m", "lit_psion", "fit", "--config", "fixtures/tiny.yaml", "--trainer.default_root_dir", str(root),
               "--trainer.strategy", "elastic_mesh", "--trainer.max_steps", str(steps),
               "--trainer.enable_progress_bar", "false"]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_agree_on_membership_and_a_shrink_continues_the_same_batches(tmp_path: Path) -> None:
    port = _free_port()
    agents = [_torchrun_node(tmp_path, node, rank, 2, port, 6) for rank, node in enumerate(("node-a", "node-b"))]
    for agent in agents:
        assert agent.wait(timeout=600) == 0, agent.stderr.read()[-3000:]
    solo = _torchrun_node(tmp_path, "node-a", 0, 1, _free_port(), 12)
    assert solo.wait(timeout=600) == 0, solo.stderr.read()[-3000:]
    layout = RunLayout(tmp_path, "mesh-run")
    start, shrink = memberships(layout)
    assert (start["epoch"], start["change"], start["world_size"]) == (1, "start", 2)
    assert start["members"] == {"node-a": "active", "node-b": "active"}
    assert (shrink["epoch"], shrink["change"], shrink["world_size"]) == (2, "shrink", 1)
    assert shrink["members"] == {"node-a": "active", "node-b": "offline"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["mesh-run"], "one run, whatever the ranks"
    chain = [json.loads(line) for line in layout.receipts.read_text().splitlines()]
    digests = [r["body"]["batch_digest"] for r in chain if r["kind"] == "trainer_step"]
    reference = tmp_path / "single"
    assert fit("--trainer.default_root_dir", str(reference), "--trainer.max_steps", "12") == 0
    single = RunLayout(reference, read_latest(reference))
    expected = [json.loads(line)["body"]["batch_digest"] for line in single.receipts.read_text().splitlines()
                if '"trainer_step"' in line]  # fmt: skip
    assert digests == expected, "the mesh trained the single-process run's global batches, step for step"


def _node_processes(node: str) -> list[int]:
    """Every process (agent and worker) of mesh node ``node``, found by the node id in its environment."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"LIT_PSION_NODE_ID={node}".encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def _wait_for(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_a_mesh_that_grows_shrinks_loses_rank_0_and_drains_trains_the_single_process_run(tmp_path: Path) -> None:
    """2 -> 3 (C joins) -> 2 (C killed) -> 2 (rank 0's node killed, D replaces it) -> 1 (D drained): every
    change a membership epoch, each global batch trained once, in the single-process run's order, to its weights."""
    port, root, env = _free_port(), tmp_path / "runs", {**os.environ, "OMP_NUM_THREADS": "1"}
    store = subprocess.Popen([sys.executable, "-m", "lit_psion", "mesh", "store", "--port", str(port)], env=env,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    steps_total, settings = 1500, ["--data.batch_size", "12", "--model.init_args.decoder.dropout", "0.0",
                                   "--trainer.val_check_interval", "500", "--trainer.log_every_n_steps", "50"]
    slow = callbacks_config(tmp_path / "slow.json", ("SlowSteps", {"seconds": 0.03}))
    fit_args = ["--config", "fixtures/tiny.yaml", "--config", slow, "--nnodes", "1:3", "--store", f"127.0.0.1:{port}",
                "--run-id", "m", "--max-restarts", "3", "--last-call", "20", "--trainer.default_root_dir", str(root),
                "--trainer.max_steps", str(steps_total), "--trainer.enable_progress_bar", "false",
                "--checkpoint.every_n_train_steps", "100", *settings]  # fmt: skip
    layout = RunLayout(root, "m")

    def launch(node: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "lit_psion", "mesh", "launch", "--node-id", node, *fit_args]
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def epochs() -> list[dict]:
        return memberships(layout) if layout.receipts.is_file() else []

    def steps() -> int:
        return layout.receipts.read_text().count('"trainer_step"') if layout.receipts.is_file() else 0

    def changed_to(change: str, count: int = 1) -> Callable[[], bool]:
        return lambda: sum(e["change"] == change for e in epochs()) >= count

    def trains_on(seconds: float = 120) -> None:
        mark = steps()
        assert _wait_for(lambda: steps() >= mark + 40, seconds), f"the mesh trains on after {epochs()[-1]}"

    agents = {}
    try:
        assert "listening" in store.stdout.readline()
        agents = {node: launch(node) for node in ("A", "B")}
        assert _wait_for(lambda: steps() >= 20, 180), "the 2-node mesh trains"
        agents["C"] = launch("C")
        joined = time.monotonic()
        assert _wait_for(changed_to("grow"), 60), "C joins within 60 s"
        trains_on()
        assert time.monotonic() - joined < 90, "training at world 3 within 90 s of the join"
        for pid in _node_processes("C"):  # a node lost at world 3: its agent and worker at once
            os.kill(pid, signal.SIGKILL)
        assert _wait_for(lambda: not _node_processes("C"), 5), "no process of the killed node is left"
        assert _wait_for(changed_to("shrink"), 60), "A and B go on without C"
        trains_on()
        holder = lock_holder(layout.run_dir)
        rank_0 = next(n for n in ("A", "B") if holder is not None and holder.pid in _node_processes(n))
        killed = time.monotonic()
        for pid in _node_processes(rank_0):  # the agent and its worker, at once: the node hosting rank 0 lost
            os.kill(pid, signal.SIGKILL)
        assert _wait_for(lambda: not _node_processes(rank_0), 5), "no process of the killed node is left"
        assert time.monotonic() - killed < 6
        agents["D"] = launch("D")
        assert _wait_for(lambda: len(epochs()) >= 4, 120), "the survivor and D re-form the mesh"
        trains_on()
        survivor = "B" if rank_0 == "A" else "A"
        assert main(["mesh", "drain", str(layout.run_dir), "D"]) == 0
        assert agents["D"].wait(timeout=120) == 0, agents["D"].stderr.read()[-3000:]
        assert agents[survivor].wait(timeout=600) == 0, agents[survivor].stderr.read()[-3000:]
    finally:
        for process in [store, *agents.values()]:
            if process.poll() is None:
                process.kill()
        for node in "ABCD":
            for pid in _node_processes(node):
                os.kill(pid, signal.SIGKILL)
    history = [(e["epoch"], e["change"], e["world_size"]) for e in epochs()]
    assert history == [(1, "start", 2), (2, "grow", 3), (3, "shrink", 2), (4, "replace", 2), (5, "drain", 1)]
    replaced = epochs()[3]
    assert replaced["previous_members"][rank_0] == "active" and replaced["members"][rank_0] == "offline"
    assert replaced["members"]["D"] == "active" and epochs()[-1]["members"][survivor] == "active"
    restarts = [int(e["settings"].get("TORCHELASTIC_RESTART_COUNT", 0)) for e in epochs()]
    assert max(restarts) <= 3, "joins did not use up --max-restarts 3 (a drain or a crash uses one per agent)"
    assert epochs()[1]["steps_replayed"] == epochs()[4]["steps_replayed"] == 0, "a join and a drain checkpoint first"
    chain = [json.loads(line)["body"] for line in layout.receipts.read_text().splitlines() if '"trainer_step"' in line]
    by_step = {receipt["step_out"]: receipt["batch_digest"] for receipt in chain}  # a replayed step: its last run
    assert sorted(by_step) == list(range(1, steps_total + 1)), "every step once in the end, none missing"
    reference = tmp_path / "single"
    assert fit("--trainer.default_root_dir", str(reference), "--trainer.max_steps", str(steps_total),
               "--checkpoint.every_n_train_steps", "500", *settings) == 0  # fmt: skip
    single = RunLayout(reference, read_latest(reference))
    expected = [json.loads(line)["body"]["batch_digest"] for line in single.receipts.read_text().splitlines()
                if '"trainer_step"' in line]  # fmt: skip
    assert [by_step[step] for step in range(1, steps_total + 1)] == expected, "the single-process run's batches"
    mesh_weights = load_file(layout.checkpoint(steps_total) / "model.safetensors")
    single_weights = load_file(single.checkpoint(steps_total) / "model.safetensors")
    for name, tensor in single_weights.items():
        assert torch.allclose(mesh_weights[name], tensor, rtol=1e-3, atol=1e-4), name
    assert main(["doctor", str(layout.run_dir)]) == 0


def test_a_sigterm_from_the_agent_stops_the_mesh_at_the_next_step_after_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    sigterm = callbacks_config(tmp_path / "sigterm.json", ("SigtermAt", {"step": 4}))
    monkeypatch.setenv("LIT_PSION_NODE_ID", "node-a")
    capsys.readouterr()
    code = fit("--config", sigterm, "--trainer.default_root_dir", str(tmp_path), *ELASTIC, "--trainer.max_steps", "12")
    assert code == 10
    assert "membership_changed" in capsys.readouterr().err
    layout = RunLayout(tmp_path, read_latest(tmp_path))
    assert read_json(layout.pointer)["step"] == 4, "the step under way when the signal came finished, then a checkpoint"
    assert read_json(layout.run_file)["status"] == "paused"
    paused = [json.loads(line)["body"] for line in layout.receipts.read_text().splitlines()
              if '"training_run"' in line][-1]  # fmt: skip
    assert (paused["event"], paused["outcome"]) == ("paused", "membership_changed")
    assert _fit(tmp_path, "node-a", 12, monkeypatch, run_id=layout.run_id) == 0
    restart = memberships(layout)[-1]
    assert (restart["epoch"], restart["change"], restart["steps_replayed"]) == (2, "restart", 0)


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    """A run trained under ElasticMeshStrategy by node-a (world 1), completed."""
    root = tmp_path_factory.mktemp("mesh")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MASTER_PORT", str(port))
        patch.setenv("LIT_PSION_NODE_ID", "node-a")
        assert fit("--trainer.default_root_dir", str(root), *ELASTIC, "--trainer.max_steps", "3") == 0
        if dist.is_initialized():
            dist.destroy_process_group()
    return RunLayout(root, read_latest(root))


def _two_nodes_paused(layout: RunLayout) -> None:
    layout.membership.write_text(json.dumps({"epoch": 2, "world_size": 2,
                                             "nodes": {"node-a": "active", "node-b": "active"}}))  # fmt: skip
    record = read_json(layout.run_file)
    layout.run_file.write_text(json.dumps({**record, "status": "paused"}))


DRAINS = [
    ("a run that has completed", lambda layout: None, "node-a", "has completed"),
    ("a node that is not a member", _two_nodes_paused, "node-z", "not an active member"),
    ("the last active node", lambda layout: _two_nodes_paused(layout) or layout.membership.write_text(json.dumps(
        {"epoch": 2, "world_size": 1, "nodes": {"node-a": "active", "node-b": "offline"}})), "node-a",
     "no active node"),
    ("a completed run whose membership.json is gone", lambda layout: layout.membership.unlink(), "node-a",
     "has completed"),  # (its receipts still say it is a mesh run)
]


@pytest.mark.parametrize(("name", "setup", "node", "message"), DRAINS, ids=[d[0] for d in DRAINS])
def test_mesh_drain_refuses_what_cannot_leave_in_one_line(
    mesh_run: RunLayout, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, setup: Callable, node: str,
    message: str,
) -> None:
    shutil.copytree(mesh_run.run_dir, tmp_path / mesh_run.run_id)
    layout = RunLayout(tmp_path, mesh_run.run_id)
    setup(layout)
    capsys.readouterr()
    assert main(["mesh", "drain", str(layout.run_dir), node]) == 2
    assert message in capsys.readouterr().err
    assert not layout.drain_requests.exists()


def test_mesh_drain_and_status_hold_a_stopped_starts_epoch_to_the_receipts(mesh_run: RunLayout, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    shutil.copytree(mesh_run.run_dir, tmp_path / mesh_run.run_id)
    layout = RunLayout(tmp_path, mesh_run.run_id)
    _two_nodes_paused(layout)  # (membership.json one epoch ahead, with a node-b: a start stopped before it trained)
    capsys.readouterr()
    assert main(["mesh", "drain", str(layout.run_dir), "node-b"]) == 2, "no fit holds the run: the receipts' epoch"
    assert "not an active member" in capsys.readouterr().err and not layout.drain_requests.exists()
    assert main(["mesh", "status", str(layout.run_dir)]) == 0
    out = capsys.readouterr().out
    step = read_json(layout.run_file)["global_step"]
    assert f"{mesh_run.run_id}: paused at step {step}, membership epoch 1" in out
    assert "membership.json holds epoch 2, a start that stopped before it trained; the next start continues from " \
        "epoch 1" in out, "the receipts' epoch is shown, not the file's one ahead of it"
    write_drain_requests(layout, {"node-a": 1.0})  # (as a drain asked of a live mesh leaves it)
    assert main(["mesh", "status", str(layout.run_dir)]) == 0
    assert "drain requested: node-a" in capsys.readouterr().out


def test_mesh_status_and_drain_of_a_run_that_is_not_a_mesh_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2") == 0
    layout = RunLayout(tmp_path, read_latest(tmp_path))
    capsys.readouterr()
    assert main(["mesh", "status", str(layout.run_dir)]) == 0
    assert "no membership yet (not a mesh run, or it has not started)" in capsys.readouterr().out
    assert main(["mesh", "drain", str(layout.run_dir), "A"]) == 2
    assert "is not a mesh run" in capsys.readouterr().err


def _one_node(root: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run one `mesh launch` node of ``fixtures/tiny.yaml`` against a fresh `mesh store`: its result and seconds."""
    port, env = _free_port(), {**os.environ, "OMP_NUM_THREADS": "1"}
    store = subprocess.Popen([sys.executable, "-m", "lit_psion", "mesh", "store", "--port", str(port)], env=env,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "listening" in store.stdout.readline()
        started = time.monotonic()
        node = subprocess.run([sys.executable, "-m", "lit_psion", "mesh", "launch", "--node-id", "A",
                               "--store", f"127.0.0.1:{port}", "--config", "fixtures/tiny.yaml",
                               "--trainer.default_root_dir", str(root), *args],
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        return node, time.monotonic() - started
    finally:
        store.kill()


def test_a_node_that_finds_no_mesh_within_the_join_timeout_exits_rendezvous_timeout(tmp_path: Path) -> None:
    node, seconds = _one_node(tmp_path, "--nnodes", "2:3", "--run-id", "lonely", "--join-timeout", "3",
                              "--data.batch_size", "12")
    assert node.returncode == 12, node.stderr[-2000:]
    assert "no mesh of --nnodes 2:3 formed" in node.stderr.splitlines()[-1]
    assert "Traceback" not in node.stderr, "the timeout is one line, not also the agent's traceback"
    assert seconds < 60
    assert not (tmp_path / "lonely").exists(), "no run was started"


def test_a_node_with_no_store_to_reach_exits_rendezvous_timeout_within_the_join_timeout(tmp_path: Path) -> None:
    """torchrun's agent retried a store nobody serves for ever (past two minutes), whatever --join-timeout said."""
    started = time.monotonic()
    node = subprocess.run([sys.executable, "-m", "lit_psion", "mesh", "launch", "--node-id", "A", "--nnodes", "2",
                           "--store", f"127.0.0.1:{_free_port()}", "--run-id", "r", "--join-timeout", "2",
                           "--config", "fixtures/tiny.yaml", "--trainer.default_root_dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert node.returncode == 12, node.stderr[-2000:]
    assert "nothing listens at --store 127.0.0.1:" in node.stderr and len(node.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("nnodes", ["3:2", "0", "0:2", "two", "2:", "\u00b2", "1:\u00b3"])
def test_an_impossible_node_count_is_one_line(nnodes: str, capsys: pytest.CaptureFixture) -> None:
    """torchrun asserted it, with a traceback and exit 1."""
    assert main(["mesh", "launch", "--node-id", "A", "--nnodes", nnodes, "--store", "127.0.0.1:1", "--run-id", "r",
                 "--config", "fixtures/tiny.yaml"]) == 2  # fmt: skip
    assert f"--nnodes {nnodes!r} is not N or MIN:MAX" in capsys.readouterr().err


def test_a_stop_on_the_last_step_lets_the_run_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sigterm = callbacks_config(tmp_path / "sigterm.json", ("SigtermAt", {"step": 6}))
    monkeypatch.setenv("LIT_PSION_NODE_ID", "node-a")
    assert fit("--config", sigterm, "--trainer.default_root_dir", str(tmp_path), *ELASTIC,
               "--trainer.max_steps", "6") == 0  # fmt: skip
    assert read_json(RunLayout(tmp_path, read_latest(tmp_path)).run_file)["status"] == "completed"


def test_a_stop_inside_an_accumulation_window_waits_for_its_optimizer_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sigterm = callbacks_config(tmp_path / "sigterm.json", ("SigtermAt", {"step": 4}))  # at step 4's first micro-batch
    monkeypatch.setenv("LIT_PSION_NODE_ID", "node-a")
    accumulate = ("--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "8")
    root = tmp_path / "mesh"
    assert fit("--config", sigterm, "--trainer.default_root_dir", str(root), *ELASTIC, *accumulate) == 10
    layout = RunLayout(root, read_latest(root))
    assert read_json(layout.pointer)["step"] == 4
    monkeypatch.setenv("LIT_PSION_RUN_ID", layout.run_id)
    assert fit("--trainer.default_root_dir", str(root), *ELASTIC, *accumulate) == 0
    monkeypatch.delenv("LIT_PSION_RUN_ID")
    reference = tmp_path / "single"
    assert fit("--trainer.default_root_dir", str(reference), *accumulate) == 0

    def digests(run: RunLayout) -> list[str]:
        return [json.loads(line)["body"]["batch_digest"] for line in run.receipts.read_text().splitlines()
                if '"trainer_step"' in line]  # fmt: skip

    assert digests(layout) == digests(RunLayout(reference, read_latest(reference))), "every micro-batch once, in order"


@pytest.mark.slow  # default-suite budget: a multi-process scenario of ~15-35 s, run by CI's slow step
def test_an_error_no_restart_can_fix_stops_the_node_with_its_code(tmp_path: Path) -> None:
    node, seconds = _one_node(tmp_path, "--nnodes", "1", "--run-id", "bad", "--data.files", "missing.txt")
    assert node.returncode == 3, node.stderr[-2000:]
    assert node.stderr.count("data file not found: 'missing.txt'") == 1, "one try, not --max-restarts of them"
    assert seconds < 90


@pytest.mark.slow  # default-suite budget: a multi-process scenario of ~15-35 s, run by CI's slow step
def test_epochs_rise_by_one_even_when_an_epoch_ends_before_its_first_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIT_PSION_NODE_ID", "node-a")
    monkeypatch.setenv("LIT_PSION_RUN_ID", "mesh-run")
    kill = callbacks_config(tmp_path / "kill.json", ("KillAt", {"step": 5}))
    for _ in range(2):  # each attempt resumes from step 3 and is killed at step 5, before step 6's checkpoint
        result = fit_subprocess("--config", kill, "--trainer.default_root_dir", str(tmp_path), *ELASTIC)
        assert result.returncode == -9, result.stderr[-2000:]
    assert _fit(tmp_path, "node-a", 12, monkeypatch) == 0
    epochs = [m["epoch"] for m in memberships(RunLayout(tmp_path, "mesh-run"))]
    assert epochs == [1, 2, 3]


def test_two_nodes_with_one_node_id_are_refused_in_one_line(tmp_path: Path) -> None:
    port = _free_port()
    agents = [_torchrun_node(tmp_path, "same", rank, 2, port, 6) for rank in range(2)]
    errors = []
    for agent in agents:
        agent.wait(timeout=300)
        errors.append(agent.stderr.read())
    assert all(agent.returncode != 0 for agent in agents)
    assert any("lit_psion: error: node id 'same' is used by 2 nodes" in error for error in errors), errors[0][-2000:]
    assert all(error.count("lit_psion: error:") <= 1 for error in errors), "one line per node"


@pytest.mark.parametrize("where", ["in use", "bogus.invalid", "8.8.8.8"])
def test_a_store_address_it_cannot_listen_on_is_one_line_at_once(where: str, capsys: pytest.CaptureFixture) -> None:
    """A port in use read 'another worker of the mesh is gone' (exit 11); a foreign host hung for minutes."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        host = "127.0.0.1" if where == "in use" else where
        started = time.monotonic()
        assert main(["mesh", "store", "--host", host, "--port", str(port)]) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert f"cannot listen on {host}:{port}" in err and ("(in use)" in err) == (where == "in use")


@pytest.mark.parametrize("store", ["127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:\u00b9", "127.0.0.1", ":29500"])
def test_a_store_address_that_is_not_one_is_refused_at_once(store: str, capsys: pytest.CaptureFixture) -> None:
    """An out-of-range port waited the whole --join-timeout for a store that cannot exist."""
    started = time.monotonic()
    assert main(["mesh", "launch", "--node-id", "A", "--nnodes", "2", "--store", store, "--run-id", "r",
                 "--config", "fixtures/tiny.yaml"]) == 2  # fmt: skip
    assert time.monotonic() - started < 10
    assert f"--store {store!r} is not HOST:PORT" in capsys.readouterr().err

