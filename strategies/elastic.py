"""``ElasticMeshStrategy``: DDP whose every worker-group start is a receipted membership epoch (issue 14).

Launched by torchrun (elastic or not), each worker names its node (``LIT_PSION_NODE_ID``, else the
host name). At setup, every rank gathers every rank's node id, so all ranks hold the same member
list; the previous membership comes from the checkpoint being resumed and the run's last membership
receipt (not from any agent's own restart count, nor from ``membership.json`` alone, which has no digest),
so the new ``membership_epoch`` is identical on every rank. Rank 0 writes
``membership.json`` and, once training starts, a ``membership`` receipt: epoch, previous and new
members with their states, world sizes, the change (start, grow, shrink, replace, restart), the
launcher's settings, the resumed checkpoint's manifest digest, the global cursor and the steps
replayed since that checkpoint. Checkpoints record the membership they were written in.

Every step starts with one agreement among the ranks (a 2-int all-reduce): has any worker's agent
sent SIGTERM (the mesh re-forms: a node joins, or the agents stop), or has ``mesh drain`` asked a
node to leave? If so, every rank finishes that step, the mesh checkpoints, and the workers stop
together: a drained node's workers exit 0 (their agent leaves the mesh), the others exit 10
(``membership_changed``) and their agents re-form the mesh. Nothing is trained twice that was
checkpointed, and no rank decides alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from typing_extensions import override

from lit_psion.core import RunLayout, run_context
from lit_psion.core.chain import log_lines
from lit_psion.core.checkpoint import MANIFEST_FILE
from lit_psion.core.contracts import Resumable
from lit_psion.core.digest import sha256_file
from lit_psion.core.errors import ConfigError, EvidenceError, MembershipChanged
from lit_psion.core.files import atomic_write_json
from lit_psion.core.membership import (
    MESH_SETTINGS_ENV,
    NODE_ID_ENV,
    NODE_INSTANCE_ENV,
    NODE_MARKERS_ENV,
    PAUSED_MARKER,
    STOPPING,
    Membership,
    MembershipChange,
    NodeState,
    check_global_batch,
    classify,
    last_receipted,
    next_membership,
    read_drain_requests,
    read_membership,
    second_launches,
    trusted_previous,
    write_drain_requests,
    write_membership,
)
from lit_psion.core.receipt_log import emit_receipt
from lit_psion.core.receipts import MembershipReceipt
from lit_psion.strategies.transactional import Transactional

LAUNCH_SETTINGS_ENV = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RESTART_COUNT",
                       "GROUP_WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_USE_AGENT_STORE")  # fmt: skip
"""What a torchrun launch says about itself, recorded in each membership receipt."""


@dataclasses.dataclass(frozen=True, slots=True)
class MeshStop:
    """Why a mesh worker stopped at a step boundary (what ``python -m lit_psion`` exits with)."""

    node: str
    step: int
    drained: bool
    """This worker's node was drained: it leaves the mesh (exit 0)."""
    signalled: bool
    """This worker's own agent sent SIGTERM (it is restarting or stopping the worker group)."""
    drain: bool
    """The stop was for a drain (of this node or another)."""


_stopped: MeshStop | None = None
_signal_seen = False
COLLECTIVE_TIMEOUT = timedelta(seconds=120)
"""How long a collective waits for a peer (torch's default is 30 minutes): a node lost without closing its
sockets (power, network) fails the survivors' next collective within this, and they re-form."""


def mesh_stop() -> MeshStop | None:
    """How this process's mesh worker stopped, if it stopped for the mesh (None otherwise)."""
    return _stopped


def clear_mesh_stop() -> None:
    """Forget a previous fit's stop (one process may run several fits)."""
    global _stopped, _signal_seen
    _stopped, _signal_seen = None, False


def signal_seen() -> bool:
    """Whether this worker's agent has sent SIGTERM (or SIGINT) since its fit began, before or after the stop."""
    return _signal_seen


def node_id() -> str:
    """This worker's node: ``LIT_PSION_NODE_ID`` (set per agent by ``mesh launch``), else the host name."""
    return os.environ.get(NODE_ID_ENV) or socket.gethostname()


class ElasticMeshStrategy(DDPStrategy):
    """DDP with membership epochs (registry name ``elastic_mesh``; gloo on CPU, NCCL on CUDA).

    Args:
        node_id: This worker's node id (default: ``LIT_PSION_NODE_ID`` or the host name).
        **kwargs: ``DDPStrategy``'s arguments.
    """

    def __init__(self, node_id: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", COLLECTIVE_TIMEOUT)  # a peer lost without a word fails in a minute, not 30
        super().__init__(**kwargs)
        self.node_id = node_id
        self.membership: Membership | None = None
        self.previous: Membership | None = None
        self.change: MembershipChange | None = None
        self._signalled = False
        self._stop_pending = False
        self._drain_pending = False
        self._requests_seen: tuple[int, int] | None = None

    @override
    def setup(self, trainer: L.Trainer) -> None:
        if "TORCHELASTIC_RUN_ID" in os.environ:
            _exit_with_the_agent()
        clear_mesh_stop()
        # Lightning registers its SIGTERM handler after setup: make it ours, which only notes the signal (Lightning's
        # broadcasts from inside the handler, a collective on the signalled rank alone). SIGINT too: torchrun passes
        # Ctrl-C on to its workers as SIGINT, and a mesh stops at a step boundary either way.
        trainer._signal_connector._sigterm_notifier_fn = self._note_sigterm
        super().setup(trainer)
        run = run_context(trainer)
        manifest = run.resume_manifest
        recorded = manifest.membership if manifest is not None and run.resume_from is not None else None
        checkpointed = Membership.from_json_dict(recorded) if recorded else None
        _check_global_batch(trainer)
        self.previous = self._previous_epoch(run.layout, checkpointed)
        members, instances = self._gather_node_ids(self.previous)
        self.change = classify(self.previous, members)
        self.membership = next_membership(self.previous, members, self.world_size, instances)
        if self.is_global_zero:
            write_membership(run.layout, self.membership)
            requests = read_drain_requests(run.layout)  # a drain is done once its node has left
            write_drain_requests(run.layout, {node: at for node, at in requests.items() if node in members})

    def _previous_epoch(self, layout: RunLayout, checkpointed: Membership | None) -> Membership | None:
        """The epoch that ran last, as the receipts and the resumed checkpoint record it (an epoch that ended before
        its first checkpoint still counts); ``membership.json`` adds its drain marks and launch tokens where it
        agrees with them. Rank 0 reads and tells every rank, so a damaged or edited file stops every rank alike."""
        box: list[Any] = [None]
        if self.is_global_zero:
            try:
                receipted = last_receipted(layout.receipts, layout.run_id)
                last = trusted_previous(checkpointed, receipted, read_membership(layout), layout.membership)
                box = [("epoch", last.to_json_dict() if last is not None else None)]
            except EvidenceError as error:
                box = [("damaged", str(error))]
            except OSError as error:  # told to every rank: none waits for a broadcast that never comes
                box = [("damaged", f"cannot read {error.filename or layout.run_dir} ({error.strerror or error}); "
                                   "make the run directory readable and launch again")]  # fmt: skip
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.broadcast_object_list(box, src=0)
        what, said = box[0]
        if what == "damaged":
            raise EvidenceError(said)
        return Membership.from_json_dict(said) if said else None

    def _gather_node_ids(self, previous: Membership | None) -> tuple[list[str], dict[str, str]]:
        """Every rank's node id in rank order, and each node's launch token: the same on every rank.

        Two launches with one node id: where the last epoch recorded which launch ran it, the other is turned away
        alone (its ``mesh launch`` stops, exit 2) and the mesh re-forms without it; otherwise every node stops.
        """
        mine, token = self.node_id or node_id(), os.environ.get(NODE_INSTANCE_ENV, "")
        if not (dist.is_available() and dist.is_initialized()) or self.world_size == 1:
            return [mine], {mine: token} if token else {}
        gathered: list[Any] = [None] * self.world_size
        machine = os.environ.get("GROUP_RANK", "0")  # torchrun's rank of this worker's agent (its node)
        dist.all_gather_object(gathered, (mine, machine, token))  # Lightning's all_gather takes tensors
        gathered = [(str(node), str(agent), str(launch)) for node, agent, launch in gathered]
        if away := second_launches(gathered, previous):
            node = sorted(away)[0]
            if any(len(tokens) == len({t for n, _, t in gathered if n == shared}) for shared, tokens in away.items()):
                raise ConfigError(f"node id {node!r} is used by {len({a for n, a, _ in gathered if n == node})} nodes "
                                  "of the mesh at once; give each `mesh launch` its own --node-id")  # fmt: skip
            if token in away.get(mine, ()):
                raise ConfigError(f"node id {mine!r} is already a node of this mesh (another `mesh launch` runs it); "
                                  "give this launch its own --node-id")  # fmt: skip
            raise MembershipChanged(f"a second `mesh launch` with node id {node!r} joined and is turned away; the "
                                    "mesh re-forms without it")  # fmt: skip
        return [node for node, _, _ in gathered], {node: launch for node, _, launch in gathered if launch}

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        trainer = self.lightning_module.trainer
        run = run_context(trainer)
        manifest = run.resume_manifest if run.resume_from is not None else None
        loader = trainer.train_dataloader
        cursor = loader.state_dict() if isinstance(loader, Resumable) else None
        emit_receipt(trainer, MembershipReceipt(
            stage_id=run.stage, epoch=self.membership.epoch, change=str(self.change),
            previous_members=self.previous.to_json_dict()["nodes"] if self.previous else {},
            members=self.membership.to_json_dict()["nodes"],
            previous_world_size=self.previous.world_size if self.previous else None,
            world_size=self.membership.world_size,
            settings=launch_settings(),
            checkpoint_manifest_digest=_manifest_digest(run.resume_from) if manifest is not None else None,
            cursor=cursor, steps_replayed=_steps_replayed(run.layout.receipts, manifest.step) if manifest else 0,
        ))  # fmt: skip
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._note_sigterm)

    def _note_sigterm(self, *_: Any) -> None:
        global _signal_seen
        self._signalled = _signal_seen = True

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        trainer = self.lightning_module.trainer
        requested = self._pending_drains(trainer) if self.is_global_zero else []
        flags = torch.tensor([int(self._signalled), int(bool(requested))], device=self.root_device)
        if self.world_size > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # one agreement, the same on every rank
        if flags[1]:
            box = [requested]
            if self.world_size > 1:
                dist.broadcast_object_list(box, src=0)
            self.membership = self.membership.draining(box[0])  # recorded by the stopping step's checkpoint
            self._drain_pending = True
            if self.is_global_zero:
                write_membership(run_context(trainer).layout, self.membership)
        self._stop_pending = self._stop_pending or bool(flags.any())
        if not self._stop_pending or trainer.fit_loop.epoch_loop._should_accumulate():
            return  # nothing to stop for, or mid accumulation window: stop where an optimizer step ends
        if trainer.global_step + 1 >= trainer.max_steps > 0:
            return  # the run's last step: it completes instead (a restarted group then finds it complete)
        global _stopped
        mine = self.node_id or node_id()
        drained = self.membership.nodes.get(mine) == NodeState.DRAINING
        _stopped = MeshStop(node=mine, step=trainer.global_step + 1, signalled=self._signalled,
                            drain=self._drain_pending, drained=drained)  # fmt: skip
        if drained and (markers := os.environ.get(NODE_MARKERS_ENV)):  # now: the launcher freezes our agent
            atomic_write_json(Path(markers) / f"{os.getpid()}.json", {"node": mine, "step": _stopped.step})
        # Lightning's own stop on every rank at once: this step trains, the checkpoint callback saves at
        # its end (it saves when ``received_sigterm``), then the fit loop raises SIGTERMException.
        trainer._signal_connector.received_sigterm = True

    def _pending_drains(self, trainer: L.Trainer) -> list[str]:
        """Rank 0: the training nodes ``mesh drain`` asked to leave (read when the request file changes)."""
        layout = run_context(trainer).layout
        try:
            stat = layout.drain_requests.stat()
        except OSError:
            return []
        changed = (stat.st_mtime_ns, stat.st_ino)
        if changed == self._requests_seen:
            return []
        self._requests_seen = changed
        requested = [node for node in read_drain_requests(layout) if node in self.membership.active]
        return sorted(requested) if len(requested) < len(self.membership.active) else []

    def stop_reason(self) -> str | None:
        """``membership_changed`` if this worker stopped because the mesh re-forms (a drained node too: the run
        was not drained, one of its nodes was); None when its ``mesh launch`` was told to stop (SIGTERM, Ctrl-C), so
        the pause is receipted with its cause, ``SIGTERMException``, as any fit's pause by a signal is."""
        markers = os.environ.get(NODE_MARKERS_ENV)
        if _stopped is None or (markers and (Path(markers) / STOPPING).exists()):
            return None
        return "membership_changed"

    def membership_record(self) -> dict[str, Any] | None:
        """What a checkpoint records of the mesh it was written in."""
        return self.membership.to_json_dict() if self.membership is not None else None


EXIT_ORPHANED = 9
"""A worker whose elastic agent is gone exits by itself with this code (its node has left the mesh)."""


def _exit_with_the_agent() -> None:
    """Exit as soon as this worker's agent dies (torchrun starts workers in their own session, so
    killing the agent alone would leave the worker training on as an orphan)."""
    agent = os.getppid()

    def watch() -> None:
        while os.getppid() == agent:
            time.sleep(0.5)
        os._exit(EXIT_ORPHANED)  # no clean-up: the node is gone; the mesh resumes from its durable checkpoint

    threading.Thread(target=watch, name="lit_psion-agent-watch", daemon=True).start()


def _check_global_batch(trainer: L.Trainer) -> None:
    """Under ``mesh launch``: refuse, on every rank before a step trains, a global batch that a world size the
    launch's ``--nnodes`` allows cannot split (the mesh would stop when a node joined or left)."""
    nnodes = str(launch_settings().get("nnodes", ""))  # `mesh launch` checked it: N or MIN:MAX
    batch_size = getattr(trainer.datamodule, "batch_size", None)
    per_node = os.environ.get("LOCAL_WORLD_SIZE", "1")
    if re.fullmatch(COUNTS, nnodes) and isinstance(batch_size, int) and re.fullmatch(r"[1-9][0-9]*", per_node):
        check_global_batch(batch_size, nnodes, int(per_node))


COUNTS = r"[1-9][0-9]*(:[1-9][0-9]*)?"
"""``N`` or ``MIN:MAX`` (``mesh launch`` checked its ``--nnodes``; ``LOCAL_WORLD_SIZE`` is one count)."""


def launch_settings() -> dict[str, Any]:
    """What the launcher says about itself: ``mesh launch``'s settings and torchrun's environment."""
    settings = {key: os.environ[key] for key in LAUNCH_SETTINGS_ENV if key in os.environ}
    try:
        settings |= json.loads(os.environ.get(MESH_SETTINGS_ENV, "{}"))
    except ValueError:
        settings["unreadable_settings"] = os.environ[MESH_SETTINGS_ENV]
    return settings


class TransactionalElasticMeshStrategy(Transactional, ElasticMeshStrategy):
    """Transactional steps on a mesh (``transactional_elastic_mesh``): every rank commits or rolls back together."""


def _manifest_digest(checkpoint: Path) -> str:
    return sha256_file(checkpoint / MANIFEST_FILE)


def _steps_replayed(receipts: Path, checkpoint_step: int) -> int:
    """Steps the previous epoch receipted past the resumed checkpoint (they are trained again now; a mesh writes
    each step's receipt as the step ends, so a kill loses none of them)."""
    if not receipts.is_file():
        return 0
    last = checkpoint_step
    for line in log_lines(receipts.read_text(encoding="utf-8")):
        try:
            receipt = json.loads(line)
        except ValueError:
            continue
        if receipt.get("kind") == "membership":
            last = checkpoint_step  # only the epoch that ran last counts: earlier replays were counted then
        elif receipt.get("kind") == "trainer_step":
            last = max(last, int(receipt["body"]["step_out"]))
    return last - checkpoint_step


def leave_for_the_mesh(stop: MeshStop) -> int:
    """The exit of a mesh worker that stopped, after a checkpoint, with the rest of the mesh: 0 for a drained
    node (its launcher stops its agent), else ``membership_changed`` (its agent re-forms the mesh)."""
    say = int(os.environ.get("LOCAL_RANK") or 0) == 0
    if stop.drained:
        if say:
            print(f"lit_psion: node {stop.node} drained after the checkpoint of step {stop.step}; it has left the mesh",
                  file=sys.stderr)  # fmt: skip
        return 0
    if not signal_seen() and not stop.drain:
        _await_sigterm(AGENT_FOLLOW_SECONDS)  # another agent re-forms the mesh for a join; ours follows (no restart)
    if (markers := os.environ.get(NODE_MARKERS_ENV)) and (Path(markers) / STOPPING).exists():
        atomic_write_json(Path(markers) / f"{PAUSED_MARKER}{os.getpid()}.json", {"step": stop.step})  # (its line)
    if say and markers and (Path(markers) / STOPPING).exists():
        print(f"lit_psion: node {stop.node} paused after the checkpoint of step {stop.step}: its mesh launch is "
              "stopping", file=sys.stderr)  # fmt: skip
    elif say:
        print(f"lit_psion: node {stop.node} stopped after the checkpoint of step {stop.step}: the mesh re-forms "
              f"({MembershipChanged.failure_class}); its agent starts the next membership epoch",
              file=sys.stderr)  # fmt: skip
    return MembershipChanged.exit_code


AGENT_FOLLOW_SECONDS = 3.0
"""How long a worker stopped by another node's SIGTERM waits for its own agent's (which then restarts it
without counting a failure) before it exits ``membership_changed`` on its own; under ``mesh launch
--last-call`` (5 s), so the node is back in time for the rendezvous."""


def _await_sigterm(seconds: float) -> None:
    arrived = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: arrived.set())
    arrived.wait(seconds)
