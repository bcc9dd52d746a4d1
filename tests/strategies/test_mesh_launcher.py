"""``mesh launch``'s own verdicts: what it refuses before the rendezvous, and the one line (and exit code) it gives
for each way its agent ends, in place of torchrun's tracebacks."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lit_psion.cli import main
from lit_psion.commands.mesh import _echo, _node_verdict
from lit_psion.commands.node_markers import paused_at, repeated_bug
from lit_psion.core import read_json
from tests.strategies.test_elastic import _free_port

AGENT_STDERR = """training line 1
[W1204 TCPStore.cpp:125] [c10d] recvValue failed: Broken pipe
Exception raised from sendBytes at Utils.hpp:758 (most recent call first):
frame #0: c10::Error::Error + 0x9d
<omitting python frames>

training line 2
Traceback (most recent call last):
  File "run.py", line 1, in <module>
torch.distributed.DistNetworkError: Broken pipe
Exception raised from recvBytes at Utils.hpp:670 (most recent call first):
frame #0: c10::Error::Error + 0x9d

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "api.py", line 2, in _invoke_run
torch.distributed.elastic.rendezvous.api.RendezvousConnectionError: The connection to the C10d store has failed.
lit_psion: error: a worker's own line
"""


def test_the_agents_tracebacks_and_cxx_frames_are_held_back_and_every_other_line_passes() -> None:
    held: list[str] = []
    out = io.StringIO()
    stderr, sys.stderr = sys.stderr, out
    try:
        _echo(io.StringIO(AGENT_STDERR), threading.Event(), held)
    finally:
        sys.stderr = stderr
    assert out.getvalue().splitlines() == ["training line 1", "[W1204 TCPStore.cpp:125] [c10d] recvValue failed: "
                                           "Broken pipe", "training line 2", "lit_psion: error: a worker's own line"]
    assert "frame #0" not in out.getvalue() and "RendezvousConnectionError" in "".join(held)


LAUNCH = SimpleNamespace(node_id="A", run_id="m1", store="127.0.0.1:29500")
VERDICTS = [  # (agent's exit code, signals the launcher got, its tracebacks, exit, what the line says)
    (0, [], "RendezvousClosedError: the rendezvous is closed", 0, None),
    (1, [signal.SIGTERM], "SignalException: got signal: 15", 143, "stopped by SIGTERM: its workers paused run m1 "
     "after the checkpoint of step 6; launch it again"),
    (1, [signal.SIGINT], "SignalException: got signal: 2", 130, "stopped by Ctrl-C: its workers paused run m1 after"),
    (1, [], "torch.distributed.elastic.rendezvous.api.RendezvousClosedError", 2, "rendezvous of run 'm1' at "
     "127.0.0.1:29500 is closed"),
    (1, [], "RendezvousConnectionError: The connection to the C10d store has failed", 12, "mesh store at "
     "127.0.0.1:29500 is gone"),
    (-9, [], "", 137, "its elastic agent was killed (SIGKILL)"),
    (3, [], "", 3, None),  # a worker's own code: it said why itself
]


@pytest.mark.parametrize(("code", "stopped", "tracebacks", "exit_code", "line"), VERDICTS)
def test_each_way_the_agent_ends_is_one_line_and_a_documented_code(
    capsys: pytest.CaptureFixture, code: int, stopped: list, tracebacks: str, exit_code: int, line: str | None
) -> None:
    from lit_psion.core.errors import LitPsionError

    try:
        got = _node_verdict(LAUNCH, code, stopped, tracebacks, paused=6)
    except LitPsionError as error:
        got, said = error.exit_code, str(error)
    else:
        said = capsys.readouterr().err
    assert got == exit_code
    assert (line or "") in said and "Traceback" not in said and "Exception" not in said


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_a_node_stopped_before_its_workers_paused_says_they_checkpointed_nothing(capsys: pytest.CaptureFixture,
                                                                                 how: int) -> None:  # fmt: skip
    """A stop while the workers were starting (or before the rendezvous) leaves no paused marker: the line said
    they "paused run m1 at a step boundary, after a checkpoint", of a run that may never have been created."""
    assert _node_verdict(LAUNCH, 1, [how], "SignalException", paused=None) == (143 if how == signal.SIGTERM else 130)
    said = capsys.readouterr().err
    assert "its workers checkpointed nothing of run m1" in said and "paused" not in said


def test_the_step_a_node_paused_after_is_read_from_its_workers_markers(tmp_path: Path) -> None:
    assert paused_at(tmp_path) is None
    (tmp_path / "paused-11.json").write_text('{"step": 6}')
    (tmp_path / "paused-12.json").write_text('{"step": 6}')
    (tmp_path / "paused-13.json").write_text("{")  # a worker killed mid-write: the others still tell
    (tmp_path / "fatal-14.json").write_text('{"code": 3}')
    assert paused_at(tmp_path) == 6


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--config", "no-such.yaml", "--config 'no-such.yaml': no such file"),
    ("--run-id", "../evil", "--run-id '../evil' is not a run id"),
    ("--node-id", "a/b", "--node-id 'a/b' is not a plain name"),
])  # fmt: skip
def test_what_the_workers_would_refuse_is_refused_before_waiting_for_the_store(
    capsys: pytest.CaptureFixture, flag: str, value: str, message: str
) -> None:
    args = {"--config": "fixtures/tiny.yaml", "--run-id": "m1", "--node-id": "A"} | {flag: value}
    started = time.monotonic()
    launch = ["mesh", "launch", "--nnodes", "1", "--store", f"127.0.0.1:{_free_port()}", "--join-timeout", "60"]
    assert main([*launch, *(arg for pair in args.items() for arg in pair)]) == 2
    assert message in capsys.readouterr().err and time.monotonic() - started < 5, "no store was waited for"


@pytest.mark.slow  # default-suite budget: a mesh store and two launches (~20 s)
def test_a_stopped_node_pauses_in_one_line_and_a_completed_runs_closed_rendezvous_is_named(tmp_path: Path) -> None:
    port, env = _free_port(), {**os.environ, "OMP_NUM_THREADS": "1"}
    store = subprocess.Popen([sys.executable, "-m", "lit_psion", "mesh", "store", "--port", str(port)], env=env,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    launch = [sys.executable, "-m", "lit_psion", "mesh", "launch", "--node-id", "A", "--nnodes", "1", "--store",
              f"127.0.0.1:{port}", "--config", "fixtures/tiny.yaml", "--trainer.default_root_dir", str(tmp_path),
              "--progress_bar.refresh_rate", "0"]  # fmt: skip
    try:
        assert "listening" in store.stdout.readline()
        node = subprocess.Popen([*launch, "--run-id", "long", "--trainer.max_steps", "100000"], env=env,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        metrics = tmp_path / "long" / "metrics.csv"
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 2) and time.monotonic() < deadline:
            time.sleep(0.5)
        node.send_signal(signal.SIGTERM)
        _, err = node.communicate(timeout=120)
        assert node.returncode == 143 and "Traceback" not in err, err[-2000:]
        assert "node A paused after the checkpoint of step" in err and "mesh re-forms" not in err
        assert "stopped by SIGTERM: its workers paused run long after the checkpoint of step" in err
        early = subprocess.Popen([*launch, "--run-id", "early", "--trainer.max_steps", "100000"], env=env,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(3)  # its workers are starting (importing torch): nothing is trained, nothing checkpointed
        early.send_signal(signal.SIGTERM)
        _, err = early.communicate(timeout=120)
        assert early.returncode == 143 and "Traceback" not in err, err[-2000:]
        assert "stopped by SIGTERM: its workers checkpointed nothing of run early" in err, err[-2000:]
        assert not (tmp_path / "early" / "checkpoints").exists()
        assert read_json(tmp_path / "long" / "run.json")["status"] == "paused"
        paused = [json.loads(line)["body"] for line in (tmp_path / "long" / "receipts.jsonl").read_text().splitlines()
                  if '"training_run"' in line][-1]  # fmt: skip
        assert (paused["event"], paused["outcome"]) == ("paused", "SIGTERMException"), "a pause, not a re-forming"
        done = subprocess.run([*launch, "--run-id", "short", "--trainer.max_steps", "2"], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        again = subprocess.run([*launch, "--run-id", "short", "--trainer.max_steps", "2"], env=env,
                               capture_output=True, text=True, timeout=300)  # fmt: skip
        assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-2000:]
        assert "the rendezvous of run 'short' at 127.0.0.1" in again.stderr and "is closed" in again.stderr
    finally:
        store.kill()


def test_a_bug_in_the_workers_of_one_start_is_retried_and_in_two_stops_the_node(tmp_path: Path) -> None:
    """Several workers of one start failing alike are one start: its agent's restart may get past it."""
    for name, start, message in (("bug-0-11", 0, "first"), ("bug-0-12", 0, "first too")):
        (tmp_path / f"{name}.json").write_text(json.dumps({"start": str(start), "message": message}))
    assert repeated_bug(tmp_path) is None
    (tmp_path / "bug-1-13.json").write_text(json.dumps({"start": "1", "message": "again"}))
    assert repeated_bug(tmp_path) == "again"


WORKERS_FAIL = '''import os
if os.environ.get("LOCAL_RANK") is not None:  # the workers only: a TypeError raised in lit_psion's own code (exit 1)
    import lit_psion.commands.fit_args as fit_args
    fit_args.setting_problems = int
'''


@pytest.mark.slow  # default-suite budget: a mesh store and a launch whose workers fail twice (~30 s)
def test_a_worker_that_fails_with_a_bug_stops_its_node_after_two_starts(tmp_path: Path) -> None:
    """Its agent restarted it --max-restarts (100) times, ~8 s each, saying only torchrun's "failed (exitcode: 1)"."""
    (tmp_path / "sitecustomize.py").write_text(WORKERS_FAIL)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    store = subprocess.Popen([sys.executable, "-m", "lit_psion", "mesh", "store", "--port", str(port)], env=env,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "listening" in store.stdout.readline()
        started = time.monotonic()
        node = subprocess.run([sys.executable, "-m", "lit_psion", "mesh", "launch", "--node-id", "A", "--nnodes", "1",
                               "--store", f"127.0.0.1:{port}", "--run-id", "buggy", "--config", "fixtures/tiny.yaml",
                               "--trainer.default_root_dir", str(tmp_path / "runs")], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert node.returncode == 1, node.stderr[-3000:]
        assert "node A: its workers failed with an unexpected error in two starts (TypeError" in node.stderr
        assert "a restart does not fix a bug of lit_psion's, so the node stops" in node.stderr
        assert time.monotonic() - started < 120
    finally:
        store.kill()
