"""``python -m lit_psion mesh store|launch|status|drain``: an elastic mesh on TorchElastic (docs/elastic.md).

``store`` runs the rendezvous TCPStore apart from every node, so a node's death never takes the
rendezvous with it. ``launch`` runs one node's torchrun elastic agent against that store with the
settings that work (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` so a joining node is seen at once;
``keep_alive_interval=1,keep_alive_max_attempt=3`` so a dead node is noticed in seconds), every
worker training the same run (``LIT_PSION_RUN_ID``) as node ``--node-id`` under
``ElasticMeshStrategy``; each worker-group start resumes the run's latest durable checkpoint and
receipts its membership. ``status`` prints a run's membership epoch and members. ``drain`` asks a
node to leave: at the next step boundary the mesh checkpoints, the node's workers exit 0, its
launcher stops its agent (exit 0), and the rest re-form without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING

from lit_psion.commands import CommandParser, node_markers
from lit_psion.commands.receipts import run_layout
from lit_psion.core.errors import ConfigError, RendezvousTimeout

if TYPE_CHECKING:
    from lit_psion.core.layout import RunLayout
from lit_psion.core.lock import lock_holder
from lit_psion.core.membership import (
    MESH_SETTINGS_ENV,
    NODE_INSTANCE_ENV,
    NODE_MARKERS_ENV,
    STOPPING,
    Membership,
    check_global_batch,
    read_drain_requests,
    run_membership,
    write_drain_requests,
)
from lit_psion.core.run import RUN_ID_ENV, RunRecord, RunStatus

RDZV_CONF = "is_host=false,keep_alive_interval=1,keep_alive_max_attempt=3"
RENDEZVOUS_TIMEOUT_MARK = "RendezvousTimeoutError"
"""What torchrun's agent prints when no mesh of ``--nnodes``' minimum formed within the join timeout."""


def main(args: list[str]) -> None:
    parser = CommandParser("python -m lit_psion mesh")
    actions = parser.add_subparsers(dest="action", required=True)
    store = actions.add_parser("store", help="run the rendezvous store (one per mesh, on any machine)")
    store.add_argument("--host", default="0.0.0.0")
    store.add_argument("--port", type=int, required=True)
    launch = actions.add_parser("launch", help="run this node's elastic agent",
                                description="Run this node's elastic agent, whose workers each run `fit`: every "
                                "flag not listed here (--data.batch_size 12, --trainer.default_root_dir runs, ...) is "
                                "passed to that fit, as its --config files are.")  # fmt: skip
    launch.add_argument("--config", action="append", required=True, help="the fit's config (repeatable)")
    launch.add_argument("--nnodes", required=True, help="MIN:MAX nodes (or N)")
    launch.add_argument("--node-id", required=True, help="this node's id, unique in the mesh")
    launch.add_argument("--store", required=True, help="HOST:PORT of `mesh store`")
    launch.add_argument("--run-id", required=True, help="the run every node trains (a plain name)")
    launch.add_argument("--max-restarts", type=int, default=100, help="worker-group restarts before giving up")
    launch.add_argument("--nproc-per-node", type=int, default=1)
    launch.add_argument(
        "--join-timeout",
        type=int,
        default=600,
        help="seconds to wait for --nnodes' minimum before giving up (exit 12, rendezvous_timeout)",
    )
    launch.add_argument(
        "--last-call",
        type=int,
        default=5,
        help="seconds a rendezvous that has --nnodes' minimum waits for more nodes before it starts",
    )
    status = actions.add_parser("status", help="print a run's membership epoch and members")
    status.add_argument("run_dir", type=Path)
    drain = actions.add_parser("drain", help="ask a node to leave the mesh after the next checkpoint")
    drain.add_argument("run_dir", type=Path)
    drain.add_argument("node_id")
    parsed, extra = parser.parse_known_args(args)
    if parsed.action != "launch" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if parsed.action == "store":
        serve_store(parsed.host, parsed.port)
    elif parsed.action == "launch":
        raise SystemExit(launch_node(parsed, extra))
    elif parsed.action == "drain":
        request_drain(parsed.run_dir, parsed.node_id)
    else:
        print_status(parsed.run_dir)


def serve_store(host: str, port: int) -> None:
    """Hold the rendezvous TCPStore until SIGTERM or Ctrl-C."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port!r}")
    _check_listening(host, port)
    from torch.distributed import TCPStore

    try:
        store = TCPStore(host, port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30))  # noqa: F841
    except (RuntimeError, OSError) as error:  # DistNetworkError is a RuntimeError: the port was taken since the probe
        raise ConfigError(f"cannot listen on {host}:{port} ({str(error).splitlines()[0][:120]}); give another "
                          "--port") from None  # fmt: skip
    print(f"mesh store listening on {host}:{port} (give --store HOST:{port} to every `mesh launch`)", flush=True)
    stop = False

    def finish(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, finish)
    while not stop:
        time.sleep(0.5)


def launch_node(parsed: object, extra: list[str]) -> int:
    """Run torchrun's elastic agent for this node; its exit code is the node's (0 also when it was drained)."""
    host, _, port = parsed.store.rpartition(":")
    if not host or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"--store {parsed.store!r} is not HOST:PORT; give the address `mesh store` printed")
    for flag, seconds in (("--join-timeout", parsed.join_timeout), ("--last-call", parsed.last_call)):
        if seconds < 1:
            raise ConfigError(f"{flag} must be >= 1 second, got {seconds}")
    for flag, count, least in (("--nproc-per-node", parsed.nproc_per_node, 1),
                               ("--max-restarts", parsed.max_restarts, 0)):  # fmt: skip
        if count < least:
            raise ConfigError(f"{flag} must be >= {least}, got {count}; give {flag} {least} or more")
    _check_nnodes(parsed.nnodes)
    _check_names(parsed)
    if (batch_size := _global_batch(parsed.config, extra)) is not None:
        check_global_batch(batch_size, parsed.nnodes, parsed.nproc_per_node)
    strategy = _mesh_strategy(parsed.config, extra)
    _wait_for_the_store(host, int(port), parsed.node_id, parsed.join_timeout)
    rdzv_conf = f"{RDZV_CONF},join_timeout={parsed.join_timeout},last_call_timeout={parsed.last_call}"
    settings = {"nnodes": parsed.nnodes, "rdzv_backend": "c10d", "rdzv_endpoint": parsed.store,
                "rdzv_conf": rdzv_conf, "max_restarts": parsed.max_restarts,
                "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # fmt: skip
    markers = Path(tempfile.mkdtemp(prefix="lit_psion-node-"))
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "LIT_PSION_NODE_ID": parsed.node_id,
           "LIT_PSION_RUN_ID": parsed.run_id, MESH_SETTINGS_ENV: json.dumps(settings, sort_keys=True),
           NODE_MARKERS_ENV: str(markers), NODE_INSTANCE_ENV: secrets.token_hex(8)}  # fmt: skip
    env.setdefault("OMP_NUM_THREADS", "1")
    configs = [arg for path in parsed.config for arg in ("--config", path)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", parsed.nnodes,
               "--nproc-per-node", str(parsed.nproc_per_node), "--rdzv-backend", "c10d",
               "--rdzv-endpoint", parsed.store, "--rdzv-id", parsed.run_id, "--rdzv-conf", rdzv_conf,
               "--max-restarts", str(parsed.max_restarts), "--monitor-interval", "1",
               "-m", "lit_psion", "fit", *configs, *strategy, *extra]  # fmt: skip
    agent = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, errors="replace",
                             start_new_session=True, preexec_fn=_die_with_the_launcher)  # fmt: skip
    timed_out, held = threading.Event(), []
    echo = threading.Thread(target=_echo, args=(agent.stderr, timed_out, held), daemon=True)
    echo.start()
    stopped: list[int] = []
    stopping = _forward_stop_signals(agent, stopped, markers)
    try:
        frozen = False
        while agent.poll() is None:
            if (fatal := node_markers.fatal(markers)) is not None:
                agent.send_signal(signal.SIGTERM)  # no restart can fix it: stop the node with the worker's code
                _wait_or_kill(agent, 60)
                echo.join(timeout=5)
                raise SystemExit(fatal)  # the worker said why in one line: not the agent's traceback as it stops
            if (bug := node_markers.repeated_bug(markers)) is not None:
                agent.send_signal(signal.SIGTERM)
                _wait_or_kill(agent, 60)
                echo.join(timeout=5)
                print(f"lit_psion: error: node {parsed.node_id}: its workers failed with an unexpected error in two "
                      f"starts ({bug}); a restart does not fix a bug of lit_psion's, so the node stops (set "
                      "LIT_PSION_DEBUG=1 for the traceback)", file=sys.stderr, flush=True)  # fmt: skip
                raise SystemExit(1)
            if not frozen and node_markers.marked(markers, parsed.nproc_per_node):
                # Drained: freeze the agent at once, so it cannot restart its workers or rejoin the rendezvous
                # while they finish their checkpoint; kill it once they are gone.
                agent.send_signal(signal.SIGSTOP)
                frozen = True
            if frozen and node_markers.drained(markers, parsed.nproc_per_node):
                agent.kill()
                agent.wait()
                break
            time.sleep(0.2)
    finally:
        echo.join(timeout=5)
        signal.signal(signal.SIGINT, stopping[0])
        signal.signal(signal.SIGTERM, stopping[1])
        drained, paused = node_markers.drained(markers, parsed.nproc_per_node), node_markers.paused_at(markers)
        shutil.rmtree(markers, ignore_errors=True)
    if drained:
        print(f"mesh node {parsed.node_id} drained: it has left run {parsed.run_id}", file=sys.stderr, flush=True)
        return 0
    if timed_out.is_set():
        raise RendezvousTimeout(f"node {parsed.node_id}: no mesh of --nnodes {parsed.nnodes} formed at "
                                f"{parsed.store} within --join-timeout {parsed.join_timeout} s; start the other "
                                "nodes (or lower --nnodes' minimum) and launch again")  # fmt: skip
    return _node_verdict(parsed, agent.returncode, stopped, "".join(held), paused)


AGENT_ERRORS = {  # the last line of an agent's traceback -> what it means for this node
    "RendezvousClosedError": "closed",
    "RendezvousConnectionError": "store",
    "DistNetworkError": "store",
    "DistStoreError": "store",
}


def _node_verdict(parsed: object, code: int, stopped: list[int], tracebacks: str, paused: int | None = None) -> int:
    """The node's exit code, and its one line, once its agent has exited; the agent's own traceback only when
    nothing here can say what happened (or with ``LIT_PSION_DEBUG=1``). ``paused``: the step its workers paused
    after, when they said so."""
    kinds = {kind for mark, kind in AGENT_ERRORS.items() if mark in tracebacks}
    if tracebacks and (os.environ.get("LIT_PSION_DEBUG") or not (kinds or stopped or code <= 0)):
        sys.stderr.write(tracebacks)
    if code == 0:
        return 0  # the run completed (what the agent logged as the mesh closed is not this node's failure)
    node, run = parsed.node_id, parsed.run_id
    if stopped:
        how = "Ctrl-C" if stopped[0] == signal.SIGINT else signal.Signals(stopped[0]).name
        said = f"its workers paused run {run} after the checkpoint of step {paused}; launch it again to continue" \
            if paused is not None else f"its workers checkpointed nothing of run {run} (they were starting, or had " \
            "not trained a step); launch it again to continue from the run's last durable checkpoint, if it has one"
        print(f"lit_psion: mesh node {node} stopped by {how}: {said}", file=sys.stderr, flush=True)
        return 130 if stopped[0] == signal.SIGINT else 143
    if "closed" in kinds:
        raise ConfigError(f"node {node}: the rendezvous of run {run!r} at {parsed.store} is closed (its mesh ended: "
                          "the run completed, or every node stopped); give a new --run-id, or restart `mesh store` "
                          "to continue the run")  # fmt: skip
    if "store" in kinds:
        raise RendezvousTimeout(f"node {node}: the mesh store at {parsed.store} is gone (killed or unreachable); "
                                "restart `python -m lit_psion mesh store` there and launch every node again: the "
                                "run continues from its last durable checkpoint")  # fmt: skip
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        print(f"lit_psion: mesh node {node}: its elastic agent was killed ({name}); its workers leave the mesh "
              "(exit 9), the other nodes re-form without it; launch it again to rejoin", file=sys.stderr, flush=True)
        return 128 - code
    return code


def _check_names(parsed: object) -> None:
    """What the workers would refuse only after the rendezvous, refused before it: a config that is not there, a
    run id that is not a plain name, a node id that could not name a file."""
    for path in parsed.config:
        if not Path(path).is_file():
            raise ConfigError(f"--config {path!r}: no such file; give the fit's config")
    from lit_psion.core.run import plain_run_id

    try:
        plain_run_id(parsed.run_id)
    except ConfigError as error:
        raise ConfigError(str(error).replace(f"{RUN_ID_ENV}=", "--run-id ", 1)) from None
    node = parsed.node_id
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", node):
        raise ConfigError(f"--node-id {node[:80]!r} is not a plain name (letters, digits, '-', '_'; no '/')")


def _global_batch(configs: list[str], extra: list[str]) -> int | None:
    """The ``data.batch_size`` the fit will train with, where the configs or arguments give one (the last wins, as
    in the fit's own parser); None where none does (the data's default: each worker checks it at setup)."""
    import yaml

    found: object = None
    for path in configs:
        with contextlib.suppress(OSError, ValueError, yaml.YAMLError):
            data = (yaml.safe_load(Path(path).read_text()) or {}).get("data")
            if isinstance(data, dict):
                found = (data.get("init_args") or {}).get("batch_size", data.get("batch_size", found))
    for at, arg in enumerate(extra):
        name, equals, value = arg.partition("=")
        if name in ("--data.batch_size", "--data.init_args.batch_size"):
            found = value if equals else (extra[at + 1] if at + 1 < len(extra) else found)
    if isinstance(found, str) and found.isascii() and found.isdigit():
        return int(found)
    return found if isinstance(found, int) and not isinstance(found, bool) and found > 0 else None  # else the fit's


def _check_listening(host: str, port: int) -> None:
    """Refuse at once, in one line, an address this machine cannot listen on (torch's store retries a
    host that does not resolve for minutes, printing C++ stack frames)."""
    import socket

    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as error:
        reason = "in use" if getattr(error, "errno", None) == errno.EADDRINUSE else (error.strerror or str(error))
        raise ConfigError(f"cannot listen on {host}:{port} ({reason}); give another --port, or a --host of this "
                          "machine such as 0.0.0.0") from None  # fmt: skip


def _check_nnodes(nnodes: str) -> None:
    """``N`` or ``MIN:MAX`` with 1 <= MIN <= MAX, refused in one line (torchrun asserts it with a traceback)."""
    parts = nnodes.split(":")
    if len(parts) in (1, 2) and all(part.isascii() and part.isdigit() for part in parts):
        low, high = int(parts[0]), int(parts[-1])
        if 1 <= low <= high:
            return
    raise ConfigError(f"--nnodes {nnodes!r} is not N or MIN:MAX with 1 <= MIN <= MAX (such as 2 or 2:3)")


def _wait_for_the_store(host: str, port: int, node: str, seconds: int) -> None:
    """Wait up to ``seconds`` for something to listen at the store's address: with nothing there, torchrun's
    agent retries its connection for ever, whatever the join timeout."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise RendezvousTimeout(f"node {node}: nothing listens at --store {host}:{port} (waited --join-timeout "
                                        f"{seconds} s); start `python -m lit_psion mesh store` there first, or give "
                                        "its address") from None  # fmt: skip
            time.sleep(0.5)


def _die_with_the_launcher() -> None:
    """In the agent, before torchrun starts: SIGTERM when ``mesh launch`` dies (Linux), so a killed launcher
    never leaves an agent training on in its own session."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


def _forward_stop_signals(agent: subprocess.Popen, stopped: list[int], markers: Path) -> tuple[object, object]:
    """Ctrl-C, SIGTERM or SIGHUP to ``mesh launch``: one SIGTERM to the agent, whose workers then stop at the
    step boundary after a checkpoint (the agent runs in its own session, so nothing else reaches it); the
    signal is noted in ``stopped``."""

    def stop(which: int, *_: object) -> None:
        stopped.append(which)
        with contextlib.suppress(OSError):
            (markers / STOPPING).touch()  # the workers say they pause, not that the mesh re-forms
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    for which in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(which, stop)
    return previous


def _wait_or_kill(process: subprocess.Popen, seconds: float) -> None:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _mesh_strategy(configs: list[str], extra: list[str]) -> list[str]:
    """``--trainer.strategy elastic_mesh`` unless a config or an argument already names a mesh strategy (whose
    settings that flag would replace). Any other strategy is refused: the workers would train under torchrun's agent
    with no membership epoch, receipt or drain (a flag given after ours would win over it)."""
    import yaml

    given: list[tuple[str, str]] = []
    for path in configs:
        with contextlib.suppress(OSError, ValueError, yaml.YAMLError, AttributeError):
            trainer = (yaml.safe_load(Path(path).read_text()) or {}).get("trainer") or {}
            if trainer.get("strategy") is not None:
                given.append((path, json.dumps(trainer["strategy"], default=str)))
    for at, arg in enumerate(extra):
        name, equals, value = arg.partition("=")
        if name in ("--trainer.strategy", "--trainer.strategy.class_path"):
            given.append((name, value if equals else (extra[at + 1] if at + 1 < len(extra) else "")))
    for where, value in given:
        if "elastic_mesh" not in value and "ElasticMesh" not in value:
            raise ConfigError(f"{where} sets the strategy {value.strip(chr(34))[:80]!r}, but `mesh launch` trains with "
                              "elastic_mesh (DDP with receipted membership epochs); leave the strategy out (a sharded "
                              "run continues with `fit --config configs/overlays/fsdp.yaml`)")  # fmt: skip
    return [] if given else ["--trainer.strategy", "elastic_mesh"]


TRACEBACK_CONTINUED = re.compile(r"frame #\d+: |Exception raised from |<omitting python frames>|The above exception|"
                                 r"During handling of the above exception|\s*$")
"""Lines of a traceback that are not indented: torch's C++ frames, and the links of chained exceptions."""


def _echo(stream: IO[str], timed_out: threading.Event, tracebacks: list[str]) -> None:
    """Pass the agent's (and its workers') stderr through, noting a rendezvous timeout; tracebacks are kept in
    ``tracebacks`` for the launcher, which tells what they mean in one line (or prints them)."""
    held: list[str] = []  # a traceback, held until its last line says what it is
    ended = False  # the last line ended a traceback (C++ frames and chained tracebacks may follow it)
    for line in stream:
        if RENDEZVOUS_TIMEOUT_MARK in line:
            timed_out.set()
        if line.startswith(("Traceback (most recent call last):", "Exception raised from ")) or (
                held and line[:1].isspace()) or (
                (held or ended) and TRACEBACK_CONTINUED.match(line)):  # fmt: skip
            held.append(line)
            continue
        if held and not any(held_line.startswith("Traceback") for held_line in held):  # C++ frames: no last line
            tracebacks.append("".join(held))
            held = []
        elif held:
            if RENDEZVOUS_TIMEOUT_MARK not in line:  # the timeout is told in one line (exit 12)
                tracebacks.append("".join(held) + line)
            held, ended = [], True
            continue
        ended = False
        sys.stderr.write(line)
        sys.stderr.flush()
    tracebacks.append("".join(held))


def request_drain(run_dir: Path, node: str) -> None:
    """Ask ``node`` to leave the mesh training ``run_dir`` after the next checkpoint."""
    layout = run_layout(run_dir)
    last, ahead = _current_membership(layout)
    membership = ahead if ahead is not None and lock_holder(layout.run_dir) is not None else last  # (one forming)
    if membership is None:
        raise ConfigError(f"{str(run_dir)!r} is not a mesh run (it has no membership); `mesh drain` applies to runs "
                          "trained by `mesh launch`")  # fmt: skip
    if lock_holder(layout.run_dir) is None and RunRecord.load(layout).status == RunStatus.COMPLETED:
        raise ConfigError(f"run {layout.run_id} has completed, so there is nothing to leave")
    if node not in membership.active:
        states = ", ".join(f"{name} ({state})" for name, state in sorted(membership.nodes.items()))
        raise ConfigError(f"node {node!r} is not an active member of {layout.run_id} (members: {states}); give an "
                          "active node id (mesh status RUN_DIR)")  # fmt: skip
    requests = read_drain_requests(layout)
    if not set(membership.active) - set(requests) - {node}:
        raise ConfigError(f"draining {node} would leave {layout.run_id} no active node; stop the mesh instead "
                          "(Ctrl-C each `mesh launch`: the workers checkpoint at the step boundary first)")  # fmt: skip
    write_drain_requests(layout, {**requests, node: time.time()})
    print(f"drain of {node} requested: at the next step boundary the mesh checkpoints, {node} leaves and the "
          f"rest go on (mesh status {run_dir})")  # fmt: skip


def _run_state(layout: RunLayout) -> str:
    """run.json's status and step (a completed run's nodes are still its last epoch's members)."""
    from lit_psion.core.errors import EvidenceError
    from lit_psion.core.run import RunRecord

    try:
        record = RunRecord.load(layout)
    except (EvidenceError, OSError):
        return "run.json unreadable (python -m lit_psion doctor RUN_DIR)"
    return f"{record.status} {'after' if record.status == 'failed' else 'at'} step {record.global_step}"


def _current_membership(layout: RunLayout) -> tuple[Membership | None, Membership | None]:
    """:func:`~lit_psion.core.membership.run_membership`, with receipts that cannot be read an EvidenceError too
    (exit 5, as an edited or damaged ``membership.json`` is)."""
    from lit_psion.core.errors import EvidenceError

    try:
        return run_membership(layout)
    except EvidenceError:
        raise
    except (OSError, ValueError) as error:
        raise EvidenceError(f"run {layout.run_id}: its receipts cannot be read ({error}); check the run with "
                            f"python -m lit_psion doctor {layout.run_dir}") from error  # fmt: skip


def print_status(run_dir: Path) -> None:
    layout = run_layout(run_dir)
    last, ahead = _current_membership(layout)
    holder = lock_holder(layout.run_dir)
    membership, note = last, ""
    if ahead is not None and holder is not None:
        membership, note = ahead, f"  epoch {ahead.epoch} is forming (not receipted yet)"
    elif ahead is not None:
        note = (f"  {layout.membership.name} holds epoch {ahead.epoch}, a start that stopped before it trained; the "
                f"next start continues from epoch {last.epoch if last else 0}")  # fmt: skip
    if membership is None:
        print(f"{layout.run_id}: no membership yet (not a mesh run, or it has not started)")
        if note:
            print(note)
        return
    print(f"{layout.run_id}: {_run_state(layout)}, membership epoch {membership.epoch}, world size "
          f"{membership.world_size}")  # fmt: skip
    for node, state in sorted(membership.nodes.items()):
        print(f"  {node:<24} {state}")
    if pending := sorted(node for node in read_drain_requests(layout) if node in membership.active):
        print(f"  drain requested: {', '.join(pending)} (not yet picked up)")
    if note:
        print(note)
    print(f"  writer: {holder.describe() if holder else 'none (no fit is running)'}")
