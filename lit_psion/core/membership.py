"""Mesh membership (seed 004's vocabulary, SPEC §3): who trains a run, in which epoch, and what changed.

Every worker-group start is a membership epoch. All ranks agree on the member list (node ids
gathered from every rank), compare it with the membership the last durable checkpoint recorded,
and classify the change: ``start`` (no previous membership), ``grow`` (nodes added), ``shrink``
(nodes gone), ``drain`` (only nodes that were draining gone), ``replace`` (nodes added and gone),
``restart`` (the same nodes again). A drain is requested through ``drain_requests.json`` (``mesh
drain``); the mesh marks the node ``draining``, checkpoints at the next step boundary, and the node
leaves. The
epoch is the previous one plus one, computed from the checkpoint, so it is identical on every
rank whatever each agent's own restart count says. Framework-free.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence
from typing import Any

from lit_psion.core.errors import ConfigError
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
leaves ``STOPPING`` there when it was told to stop (SIGTERM, Ctrl-C): its agent will not re-form the mesh."""
STOPPING = "stopping"


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
    """The run's ``membership.json`` (None for a run that never had one)."""
    if not layout.membership.is_file():
        return None
    return Membership.from_json_dict(read_json(layout.membership))


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
