"""Mesh membership (seed 004's vocabulary, SPEC §3): who trains a run, in which epoch, and what changed.

Every worker-group start is a membership epoch. All ranks agree on the member list (node ids
gathered from every rank), compare it with the membership the last durable checkpoint recorded,
and classify the change: ``start`` (no previous membership), ``grow`` (nodes added), ``shrink``
(nodes gone), ``drain`` (only nodes that were draining gone), ``replace`` (nodes added and gone),
``restart`` (the same nodes again). A drain is requested through ``drain_requests.json`` (``mesh
drain``); the mesh marks the node ``draining``, checkpoints at the next step boundary, and the node
leaves. The
epoch is the previous one plus one, computed from the checkpoint and the receipts, so it is identical on every
rank whatever each agent's own restart count says. Framework-free.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lit_psion.core.chain import log_lines, parse_receipt, verify_log
from lit_psion.core.errors import ConfigError, EvidenceError
from lit_psion.core.files import atomic_write_json, read_json
from lit_psion.core.layout import RunLayout

MESH_SETTINGS_ENV = "LIT_PSION_MESH_SETTINGS"
"""The launch settings ``mesh launch`` hands its workers (JSON), recorded in every membership receipt."""
NODE_ID_ENV = "LIT_PSION_NODE_ID"
"""This worker's node id (set per agent by ``mesh launch``)."""
NODE_INSTANCE_ENV = "LIT_PSION_NODE_INSTANCE"
"""A token of one ``mesh launch`` (the same across its agent's restarts): which of two launches given one node id is
the node the mesh already has (the one the last epoch recorded) and which is a second one, turned away."""
NODE_MARKERS_ENV = "LIT_PSION_NODE_MARKERS"
"""A directory of ``mesh launch``'s where its workers leave markers for it: ``<pid>.json`` when their node is
drained (the launcher freezes its agent, so it cannot rejoin, and stops it once they are gone), and
``fatal-<pid>.json`` with an exit code no restart fixes (the launcher stops the node with it). The launcher
leaves ``STOPPING`` there when it was told to stop (SIGTERM, Ctrl-C): its agent will not re-form the mesh; a worker
that then pauses after a checkpoint leaves ``paused-<pid>.json`` with its step (the launcher's line says it)."""
STOPPING = "stopping"
PAUSED_MARKER = "paused-"


class NodeState(enum.StrEnum):
    ACTIVE = "active"
    JOINING = "joining"
    DRAINING = "draining"
    OFFLINE = "offline"


class MembershipChange(enum.StrEnum):
    START = "start"
    GROW = "grow"
    SHRINK = "shrink"
    DRAIN = "drain"
    REPLACE = "replace"
    RESTART = "restart"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Membership:
    """One membership epoch: its number, its nodes and their states, and the world size they make."""

    epoch: int
    nodes: dict[str, NodeState]
    """node id -> state."""
    world_size: int
    instances: dict[str, str] = dataclasses.field(default_factory=dict)
    """node id -> the token of the ``mesh launch`` that ran it (:data:`NODE_INSTANCE_ENV`), where it had one."""

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(sorted(node for node, state in self.nodes.items() if state == NodeState.ACTIVE))

    @property
    def training(self) -> tuple[str, ...]:
        """The nodes training in this epoch (active or draining)."""
        return tuple(sorted(node for node, state in self.nodes.items()
                            if state in (NodeState.ACTIVE, NodeState.DRAINING)))  # fmt: skip

    def draining(self, nodes: Iterable[str]) -> Membership:
        """This epoch with ``nodes`` marked ``draining``: they checkpoint with the rest and then leave."""
        marked = {node: NodeState.DRAINING if node in set(nodes) and state == NodeState.ACTIVE else state
                  for node, state in self.nodes.items()}  # fmt: skip
        return dataclasses.replace(self, nodes=marked)

    def to_json_dict(self) -> dict[str, Any]:
        instances = {"instances": dict(sorted(self.instances.items()))} if self.instances else {}
        return {"epoch": self.epoch, "world_size": self.world_size,
                "nodes": {node: str(state) for node, state in sorted(self.nodes.items())}, **instances}  # fmt: skip

    @classmethod
    def from_json_dict(cls, record: dict[str, Any]) -> Membership:
        try:
            nodes = {str(node): NodeState(state) for node, state in record["nodes"].items()}
            instances = {str(node): str(token) for node, token in (record.get("instances") or {}).items()}
            return cls(epoch=int(record["epoch"]), nodes=nodes, world_size=int(record["world_size"]),
                       instances=instances)  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ConfigError(f"membership record is malformed ({error}): {record!r}") from error


def classify(previous: Membership | None, members: Iterable[str]) -> MembershipChange:
    """What a worker-group start with ``members`` is, against the previous epoch's training nodes.

    Nodes only added: ``grow``; only removed: ``drain`` if every one of them was draining, else
    ``shrink``; some of each: ``replace``; none: ``restart``.
    """
    if previous is None:
        return MembershipChange.START
    before, after = set(previous.training), set(members)
    added, removed = after - before, before - after
    if added and removed:
        return MembershipChange.REPLACE
    if added:
        return MembershipChange.GROW
    if removed:
        drained = all(previous.nodes[node] == NodeState.DRAINING for node in removed)
        return MembershipChange.DRAIN if drained else MembershipChange.SHRINK
    return MembershipChange.RESTART


def second_launches(gathered: Sequence[tuple[str, str, str]], previous: Membership | None) -> dict[str, set[str]]:
    """Node id -> the launch tokens to turn away, for each node id several launches use at once.

    ``gathered`` holds each rank's ``(node id, agent, launch token)``. Where the last epoch recorded the launch
    that ran a node id and it is among them, every other launch with that id is a second one. Where it cannot be
    told (no record, or none of them is the recorded one), every launch with the id is named: the mesh stops.
    """
    launches: dict[str, set[tuple[str, str]]] = {}
    for node, agent, token in gathered:
        launches.setdefault(node, set()).add((agent, token))
    away: dict[str, set[str]] = {}
    for node, held in launches.items():
        if len({agent for agent, _ in held}) < 2:
            continue
        incumbent = previous.instances.get(node) if previous is not None else None
        tokens = {token for _, token in held}
        away[node] = tokens - {incumbent} if incumbent in tokens and len(tokens) > 1 else tokens
    return away


def mismatched_joiners(views: Sequence[tuple[str, Any]], incumbents: Iterable[str]) -> set[str] | None:
    """The nodes to turn away from a mesh whose ranks do not all train alike, or None when that cannot be told.

    ``views`` holds each rank's node and what it trains (start checkpoint, settings), in rank order;
    ``incumbents`` the nodes of the last epoch that trained. The incumbents' ranks are the reference: a joiner
    that differs from them is turned away, and the rest re-form without it. When no incumbent trains in this
    worker group, or the incumbents themselves differ, no node can be told right: None (every rank refuses).
    """
    incumbents = set(incumbents)
    reference = [what for node, what in views if node in incumbents]
    if not reference or any(what != reference[0] for what in reference):
        return None
    return {node for node, what in views if what != reference[0]}


def next_membership(
    previous: Membership | None, members: Iterable[str], world_size: int, instances: dict[str, str] | None = None
) -> Membership:
    """The epoch a worker-group start with ``members`` opens: previous + 1, every member active (``instances``:
    each member's launch token, where it has one)."""
    members = sorted(set(members))
    if not members:
        raise ConfigError("a membership needs at least one node")
    epoch = previous.epoch + 1 if previous is not None else 1
    nodes = {node: NodeState.ACTIVE for node in members}
    if previous is not None:
        nodes |= {node: NodeState.OFFLINE for node in previous.nodes if node not in nodes}
    return Membership(epoch=epoch, nodes=nodes, world_size=world_size,
                      instances={node: token for node, token in (instances or {}).items() if node in members})


def read_membership(layout: RunLayout) -> Membership | None:
    """The run's ``membership.json`` (None for a run that never had one).

    Raises:
        EvidenceError: the file is not JSON, or not a membership record (exit 5, naming the file).
    """
    if not layout.membership.is_file():
        return None
    try:
        record = read_json(layout.membership)
        if not isinstance(record, dict):
            raise ValueError(f"a JSON {type(record).__name__}, not an object")
        return Membership.from_json_dict(record)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:  # ConfigError is a ValueError
        cause = error.__cause__ or error
        reason = f"missing {cause}" if isinstance(cause, KeyError) else str(cause)
        raise EvidenceError(f"{str(layout.membership)!r} is damaged: not a membership record ({reason[:160]}); the "
                            "mesh writes it at each membership epoch: remove it, and the next start writes it again "
                            "from the run's receipts and checkpoint") from None  # fmt: skip


def receipted_epochs(receipts: Path, run_id: str) -> list[dict[str, Any]]:
    """The bodies of the run's ``membership`` receipts, in chain order (none without a log).

    Only the part of the chain that verifies is read (the fit's receipt log refuses or repairs the rest).
    """
    if not receipts.is_file():
        return []
    verified = verify_log(receipts, run_id=run_id)
    lines = log_lines(receipts.read_text(encoding="utf-8", errors="replace"))[: verified.count]
    return [receipt.body for receipt in map(parse_receipt, lines) if receipt.kind == "membership"]


def last_receipted(receipts: Path, run_id: str, epochs: list[dict[str, Any]] | None = None) -> Membership | None:
    """The membership epoch the run's receipt chain records last (None if none); ``epochs``: its
    :func:`receipted_epochs`, if already read. The receipt holds no launch tokens and no drain marks: those come
    from the checkpoint or ``membership.json``."""
    bodies = receipted_epochs(receipts, run_id) if epochs is None else epochs
    if not bodies:
        return None
    last = bodies[-1]
    return Membership.from_json_dict({"epoch": last["epoch"], "nodes": last["members"],
                                      "world_size": last["world_size"]})  # fmt: skip


def trusted_previous(checkpointed: Membership | None, receipted: Membership | None, recorded: Membership | None,
                     where: Path) -> Membership | None:  # fmt: skip
    """The previous epoch a worker-group start continues: what the checkpoint and the receipts record.

    ``membership.json`` (``recorded``, at ``where``) carries no digest, so it only adds what they cannot know: the
    drain marks and launch tokens of the epoch they record last. It is trusted where it agrees with that epoch, and
    ignored where it is the epoch after it (written at a start that was stopped, or refused, before it trained and
    was receipted). Anything else is an edited or damaged file.

    Raises:
        EvidenceError: ``membership.json`` disagrees with the receipts and checkpoint (exit 5, naming the file).
    """
    known = [epoch for epoch in (checkpointed, receipted) if epoch is not None]
    last = max(known, key=lambda epoch: epoch.epoch, default=None)  # the checkpoint's on a tie: it has drain marks
    if recorded is None or recorded.epoch == (last.epoch if last else 0) + 1:
        return last
    if last is not None and _agrees(recorded, last):
        marked = last.draining([node for node, state in recorded.nodes.items() if state == NodeState.DRAINING])
        return dataclasses.replace(marked, instances=marked.instances or recorded.instances)
    said = f"epoch {last.epoch} ({_nodes(last)}, world size {last.world_size})" if last else "no membership epoch"
    raise EvidenceError(f"{str(where)!r} does not match the run's receipts and checkpoint: it says epoch "
                        f"{recorded.epoch} ({_nodes(recorded)}, world size {recorded.world_size}), they record {said}; "
                        "it was edited or damaged: remove it, and the next start writes it again from them")


def run_membership(
    layout: RunLayout, epochs: list[dict[str, Any]] | None = None
) -> tuple[Membership | None, Membership | None]:
    """What a run's records say of its mesh: the last epoch its latest checkpoint and its receipts record (with
    ``membership.json``'s drain marks and launch tokens where it agrees: :func:`trusted_previous`), and
    ``membership.json``'s own epoch when it is the one after that (a start not receipted yet: forming while a fit
    runs, else stopped before it trained), else None. ``epochs``: :func:`receipted_epochs`, if already read.

    Raises:
        EvidenceError: ``membership.json`` is damaged or says another epoch, other nodes or another world size.
    """
    from lit_psion.core.checkpoint import MANIFEST_FILE

    epochs = receipted_epochs(layout.receipts, layout.run_id) if epochs is None else epochs
    checkpointed = None
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError, RecursionError):  # (checkpoints' verdicts)
        pointer = read_json(layout.pointer) if layout.pointer.is_file() else {}
        manifest = layout.checkpoints / str(pointer.get("checkpoint")) / MANIFEST_FILE
        recorded = read_json(manifest).get("membership") if pointer and manifest.is_file() else None
        checkpointed = Membership.from_json_dict(recorded) if isinstance(recorded, dict) else None
    recorded = read_membership(layout)
    last = trusted_previous(checkpointed, last_receipted(layout.receipts, layout.run_id, epochs), recorded,
                            layout.membership)  # fmt: skip
    ahead = recorded if recorded is not None and recorded.epoch == (last.epoch if last else 0) + 1 else None
    return last, ahead


TRAINING = {NodeState.ACTIVE, NodeState.DRAINING}


def _agrees(recorded: Membership, last: Membership) -> bool:
    """The same epoch, nodes and world size; states alike but for drain marks; launch tokens alike where known."""
    same_states = all(state == last.nodes[node] or {state, last.nodes[node]} <= TRAINING
                      for node, state in recorded.nodes.items()) if set(recorded.nodes) == set(last.nodes) else False
    tokens = not last.instances or recorded.instances == last.instances
    return (recorded.epoch, recorded.world_size) == (last.epoch, last.world_size) and same_states and tokens


def _nodes(membership: Membership) -> str:
    return ", ".join(f"{node} {state}" for node, state in sorted(membership.nodes.items()))


def world_sizes(nnodes: str, nproc_per_node: int) -> list[int]:
    """The world sizes a mesh launched with ``--nnodes MIN:MAX`` (or ``N``) and ``nproc_per_node`` can take."""
    low, _, high = nnodes.partition(":")
    return [nodes * nproc_per_node for nodes in range(int(low), int(high or low) + 1)]


def check_global_batch(batch_size: int, nnodes: str, nproc_per_node: int) -> None:
    """Refuse a global batch some world size of the mesh cannot split evenly (the mesh would stop when it grew or
    shrank to it).

    Raises:
        ConfigError: a world size ``--nnodes`` allows does not divide ``batch_size`` (exit 2).
    """
    per_node = f" x {nproc_per_node} processes per node" if nproc_per_node > 1 else ""
    largest = int(nnodes.partition(":")[2] or nnodes) * nproc_per_node
    if largest > batch_size:  # (checked before the sizes are listed: a MAX of 10**20 filled the machine's memory)
        raise ConfigError(f"--nnodes {nnodes}{per_node} lets the mesh grow to {largest} processes, more than "
                          f"batch_size {batch_size} (the global batch) can be split over; give a --nnodes MAX of at "
                          f"most {batch_size // nproc_per_node}, or a larger --data.batch_size")  # fmt: skip
    sizes = world_sizes(nnodes, nproc_per_node)
    if uneven := [size for size in sizes if batch_size % size]:
        every = math.lcm(*sizes)
        fits = max(every, -(-batch_size // every) * every)
        raise ConfigError(f"batch_size {batch_size} (the global batch) cannot be split evenly over world size "
                          f"{', '.join(map(str, uneven))}, which --nnodes {nnodes}{per_node} lets the mesh take "
                          f"(world sizes {', '.join(map(str, sizes))}); give a --data.batch_size every one divides "
                          f"(such as {fits}), or change --nnodes or --nproc-per-node")  # fmt: skip


def write_membership(layout: RunLayout, membership: Membership) -> None:
    """Write ``membership.json`` atomically (``mesh status`` reads it)."""
    atomic_write_json(layout.membership, membership.to_json_dict())


def read_drain_requests(layout: RunLayout) -> dict[str, float]:
    """Node id -> when its drain was requested (``mesh drain``); empty if none or unreadable."""
    if not layout.drain_requests.is_file():
        return {}
    try:
        nodes = read_json(layout.drain_requests).get("nodes", {})
        return {str(node): float(at) for node, at in nodes.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def write_drain_requests(layout: RunLayout, requests: dict[str, float]) -> None:
    """Write the pending drain requests atomically (an empty dict removes the file)."""
    if requests:
        atomic_write_json(layout.drain_requests, {"nodes": dict(sorted(requests.items()))})
    else:
        layout.drain_requests.unlink(missing_ok=True)
