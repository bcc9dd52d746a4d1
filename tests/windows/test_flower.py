"""The Flower engine on the real deployment runtime: a SuperLink, three SuperNodes and ``flwr run`` on localhost.

One window of three contributors must end as the one-machine engine ends the same window of a twin program
(same base, same settings): the same dispositions, the same accepted artifacts and the same candidate revision.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from lit_psion.core import read_json
from lit_psion.core.run import read_latest
from lit_psion.windows.contribute import contribute
from lit_psion.windows.coordinator import close_window, open_window
from lit_psion.windows.program import Program, plan_window
from tests.helpers import fit, subprocess_env
from tests.windows.test_windows import new_program

APP = Path(__file__).resolve().parents[2] / "lit_psion" / "windows" / "flower_app"
BIN = Path(sys.executable).parent
NODES = 3


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 60.0) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert process.poll() is None, f"the SuperLink exited ({process.returncode}):\n{log.read_text()[-3000:]}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the SuperLink did not listen on {port} within {seconds:g}s:\n{log.read_text()[-3000:]}")


def descendants(pids: set[int]) -> set[int]:
    """Every live process below ``pids`` (the runtime starts SuperExec and app processes, some in new sessions)."""
    parent_of = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent_of[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), set(pids)
    while frontier:
        frontier = {pid for pid, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def stop(processes: list[subprocess.Popen], grace: float = 15.0) -> None:
    """SIGTERM each process group we started, then SIGKILL what is left of them and of what they started."""
    started = {process.pid for process in processes}
    below = descendants(started)
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
    until = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for pid in below | descendants(started):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def local_window(root: Path) -> dict:
    """The one-machine engine's window over ``root``, in process: plan, open, contribute each assignment, close."""
    plan = plan_window(root, contributors=NODES)
    open_window(root, plan.window_id)
    for assignment in plan.assignments:
        contribute(root, plan.window_id, assignment.assignment_id)
    return close_window(root, plan.window_id)


def outcome(root: Path) -> dict:
    dispositions = read_json(Program(root).window_dir("w-0001") / "dispositions.json")["assignments"]
    return {aid: (e["contributor"], e["disposition"], tuple(e["reasons"]), e["artifact_digest"])
            for aid, e in dispositions.items()}  # fmt: skip


@pytest.mark.slow
def test_a_flower_window_disposes_and_promotes_as_the_local_engine_does(tmp_path: Path) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path / "base"), "--trainer.max_steps", "30") == 0
    base = tmp_path / "base" / read_latest(tmp_path / "base")
    flower_root = new_program(base, tmp_path / "flower", contributors=NODES)
    local_root = new_program(base, tmp_path / "local", contributors=NODES)
    local = local_window(local_root)

    link_port, *node_ports = free_ports(1 + NODES)
    env = subprocess_env(OMP_NUM_THREADS="1", FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                         PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))  # fmt: skip
    home = tmp_path / "flwr"
    (home / "cli").mkdir(parents=True)
    (home / "cli" / "config.toml").write_text(f'[superlink]\ndefault = "local-test"\n\n[superlink.local-test]\n'
                                              f'address = "127.0.0.1:{link_port}"\ninsecure = true\n')  # fmt: skip
    processes: list[subprocess.Popen] = []
    logs = {}

    def start(name: str, command: list[str]) -> subprocess.Popen:
        (home / name).mkdir(parents=True, exist_ok=True)
        logs[name] = home / f"{name}.log"
        with open(logs[name], "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**env, "FLWR_HOME": str(home / name)})  # fmt: skip
        processes.append(process)
        return process

    def tails() -> str:
        return "\n".join(f"--- {name}\n{path.read_text(errors='replace')[-2500:]}" for name, path in logs.items())

    try:
        started = time.monotonic()
        link = start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
                                   str(link_port), "--disable-runtime-dependency-installation"])  # fmt: skip
        wait_for_port(link_port, link, logs["superlink"])
        for i, port in enumerate(node_ports):
            start(f"supernode-{i}", [str(BIN / "flower-supernode"), "--insecure", "--superlink",
                                     f"127.0.0.1:{link_port}", "--host", "127.0.0.1", "--port", str(port)])  # fmt: skip
        run = start("cli", [str(BIN / "flwr"), "run", str(APP), "local-test", "--stream", "--run-config",
                            f"root='{flower_root}' windows=1 deadline=300 min-nodes={NODES}"])  # fmt: skip
        run.wait(timeout=600)
        assert run.returncode == 0, tails()
        seconds = time.monotonic() - started
    finally:
        stop(processes)

    program = Program(flower_root)
    assert program.window_ids() == ["w-0001"], tails()
    assert program.state("w-0001") == "reconciled", tails()
    assert "w-0001: 3 accepted; promote" in logs["cli"].read_text(), tails()
    flower = outcome(flower_root)
    assert len(flower) == NODES and {e[1] for e in flower.values()} == {"accepted"}, flower
    verify = subprocess.run([sys.executable, "-m", "lit_psion", "window", "verify", str(flower_root)],
                            capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The same dispositions, the same accepted adapter bytes, the same candidate and promotion.
    assert flower == outcome(local_root)
    promotion = read_json(program.window_dir("w-0001") / "promotion.json")
    same = ("decision", "reasons", "candidate_revision", "accepted_artifacts", "weights", "next_revision", "scores")
    assert {k: promotion[k] for k in same} == {k: local[k] for k in same}
    assert program.pointer()["revision"] == Program(local_root).pointer()["revision"] == local["candidate_revision"]
    print(f"flower window: {seconds:.1f}s from SuperLink start to the end of flwr run")


def test_the_server_app_refuses_a_relative_root_naming_where_it_would_look() -> None:
    """`root='windows/'`, as the docs wrote it, was resolved from the SuperLink's directory: "holds no window
    program", though the program was right there where `flwr run` was typed."""
    from types import SimpleNamespace

    from lit_psion.core.errors import ConfigError
    from lit_psion.windows.flower import serve

    with pytest.raises(ConfigError, match="'windows' is relative: the server app resolves it from the SuperLink's"):
        serve(None, SimpleNamespace(run_config={"root": "windows/"}))
