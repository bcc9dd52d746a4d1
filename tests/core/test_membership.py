"""Membership epochs: the change a worker-group start is, and the epoch it opens."""

from __future__ import annotations

import pytest

from lit_psion.core.errors import ConfigError
from lit_psion.core.membership import Membership, MembershipChange, NodeState, classify, next_membership

EPOCH_3 = next_membership(next_membership(next_membership(None, ["a", "b"], 2), ["a", "b"], 2), ["a", "b"], 2)

CHANGES = [
    ("first start", None, ["a", "b"], MembershipChange.START),
    ("the same nodes again", EPOCH_3, ["b", "a"], MembershipChange.RESTART),
    ("a node joins", EPOCH_3, ["a", "b", "c"], MembershipChange.GROW),
    ("a node leaves", EPOCH_3, ["a"], MembershipChange.SHRINK),
    ("a node is replaced", EPOCH_3, ["a", "c"], MembershipChange.REPLACE),
    ("one leaves, two join", EPOCH_3, ["a", "c", "d"], MembershipChange.REPLACE),
    ("several ranks on one node count once", EPOCH_3, ["a", "a", "b", "b"], MembershipChange.RESTART),
]


@pytest.mark.parametrize(("name", "previous", "members", "change"), CHANGES, ids=[c[0] for c in CHANGES])
def test_a_worker_group_start_is_classified(name: str, previous: Membership | None, members: list[str],
                                            change: MembershipChange) -> None:  # fmt: skip
    assert classify(previous, members) == change


def test_the_epoch_rises_by_one_per_start_and_gone_nodes_are_offline() -> None:
    assert EPOCH_3.epoch == 3 and EPOCH_3.active == ("a", "b")
    shrunk = next_membership(EPOCH_3, ["b"], 1)
    assert shrunk.epoch == 4 and shrunk.nodes == {"a": NodeState.OFFLINE, "b": NodeState.ACTIVE}
    assert classify(shrunk, ["a", "b"]) == MembershipChange.GROW  # an offline node coming back is a join


def test_membership_round_trips_and_refuses_a_malformed_record() -> None:
    assert Membership.from_json_dict(EPOCH_3.to_json_dict()) == EPOCH_3
    with pytest.raises(ConfigError, match="malformed"):
        Membership.from_json_dict({"epoch": 1, "nodes": {"a": "sleeping"}, "world_size": 1})
    with pytest.raises(ConfigError, match="at least one node"):
        next_membership(None, [], 0)
