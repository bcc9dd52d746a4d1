"""``python -m lit_psion mesh store|launch|status``: an elastic mesh on TorchElastic (docs/elastic.md).

``store`` runs the rendezvous TCPStore apart from every node, so a node's death never takes the
rendezvous with it. ``launch`` runs one node's torchrun elastic agent against that store with the
settings that work (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` so a joining node is seen at once;
``keep_alive_interval=1,keep_alive_max_attempt=3`` so a dead node is noticed in seconds), every
worker training the same run (``LIT_PSION_RUN_ID``) as node ``--node-id`` under
``ElasticMeshStrategy``; each worker-group start resumes the run's latest durable checkpoint and
receipts its membership. ``status`` prints a run's membership epoch and members.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lit_psion.commands import CommandParser
from lit_psion.commands.receipts import run_layout
from lit_psion.core.errors import ConfigError
from lit_psion.core.lock import lock_holder
from lit_psion.core.membership import MESH_SETTINGS_ENV, read_membership

RDZV_CONF = "is_host=false,keep_alive_interval=1,keep_alive_max_attempt=3"


def main(args: list[str]) -> None:
    parser = CommandParser("python -m lit_psion mesh")
    actions = parser.add_subparsers(dest="action", required=True)
    store = actions.add_parser("store", help="run the rendezvous store (one per mesh, on any machine)")
    store.add_argument("--host", default="0.0.0.0")
    store.add_argument("--port", type=int, required=True)
    launch = actions.add_parser("launch", help="run this node's elastic agent")
    launch.add_argument("--config", action="append", required=True, help="the fit's config (repeatable)")
    launch.add_argument("--nnodes", required=True, help="MIN:MAX nodes (or N)")
    launch.add_argument("--node-id", required=True, help="this node's id, unique in the mesh")
    launch.add_argument("--store", required=True, help="HOST:PORT of `mesh store`")
    launch.add_argument("--run-id", required=True, help="the run every node trains (a plain name)")
    launch.add_argument("--max-restarts", type=int, default=100, help="worker-group restarts before giving up")
    launch.add_argument("--nproc-per-node", type=int, default=1)
    status = actions.add_parser("status", help="print a run's membership epoch and members")
    status.add_argument("run_dir", type=Path)
    parsed, extra = parser.parse_known_args(args)
    if parsed.action == "store":
        serve_store(parsed.host, parsed.port)
    elif parsed.action == "launch":
        raise SystemExit(launch_node(parsed, extra))
    else:
        print_status(parsed.run_dir)


def serve_store(host: str, port: int) -> None:
    """Hold the rendezvous TCPStore until SIGTERM or Ctrl-C."""
    from torch.distributed import TCPStore

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port!r}")
    store = TCPStore(host, port, is_master=True, wait_for_workers=False)  # noqa: F841 (it serves while it lives)
    print(f"mesh store listening on {host}:{port} (give --store HOST:{port} to every `mesh launch`)", flush=True)
    stop = False

    def finish(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, finish)
    while not stop:
        time.sleep(0.5)


def launch_node(parsed: object, extra: list[str]) -> int:
    """Run torchrun's elastic agent for this node; its exit code is the node's."""
    host, _, port = parsed.store.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--store {parsed.store!r} is not HOST:PORT; give the address `mesh store` printed")
    settings = {"nnodes": parsed.nnodes, "rdzv_backend": "c10d", "rdzv_endpoint": parsed.store,
                "rdzv_conf": RDZV_CONF, "max_restarts": parsed.max_restarts,
                "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # fmt: skip
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "LIT_PSION_NODE_ID": parsed.node_id,
           "LIT_PSION_RUN_ID": parsed.run_id, MESH_SETTINGS_ENV: json.dumps(settings, sort_keys=True)}  # fmt: skip
    env.setdefault("OMP_NUM_THREADS", "1")
    configs = [arg for path in parsed.config for arg in ("--config", path)]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", parsed.nnodes,
               "--nproc-per-node", str(parsed.nproc_per_node), "--rdzv-backend", "c10d",
               "--rdzv-endpoint", parsed.store, "--rdzv-id", parsed.run_id, "--rdzv-conf", RDZV_CONF,
               "--max-restarts", str(parsed.max_restarts), "--monitor-interval", "1",
               "-m", "lit_psion", "fit", *configs, "--trainer.strategy", "elastic_mesh", *extra]  # fmt: skip
    return subprocess.call(command, env=env)


def print_status(run_dir: Path) -> None:
    layout = run_layout(run_dir)
    membership = read_membership(layout)
    if membership is None:
        print(f"{layout.run_id}: no membership yet (not a mesh run, or it has not started)")
        return
    print(f"{layout.run_id}: membership epoch {membership.epoch}, world size {membership.world_size}")
    for node, state in sorted(membership.nodes.items()):
        print(f"  {node:<24} {state}")
    holder = lock_holder(layout.run_dir)
    print(f"  writer: {holder.describe() if holder else 'none (no fit is running)'}")
