"""Membership epochs: the change a worker-group start is, and the epoch it opens."""

from __future__ import annotations

import pytest

from lit_psion.core.errors import ConfigError
from lit_psion.core.membership import (
    Membership,
    MembershipChange,
    NodeState,
    classify,
    mismatched_joiners,
    next_membership,
    second_launches,
)

EPOCH_3 = next_membership(next_membership(next_membership(None, ["a", "b"], 2), ["a", "b"], 2), ["a", "b"], 2)

CHANGES = [
    ("first start", None, ["a", "b"], MembershipChange.START),
    ("the same nodes again", EPOCH_3, ["b", "a"], MembershipChange.RESTART),
    ("a node joins", EPOCH_3, ["a", "b", "c"], MembershipChange.GROW),
    ("a node leaves", EPOCH_3, ["a"], MembershipChange.SHRINK),
    ("a node is replaced", EPOCH_3, ["a", "c"], MembershipChange.REPLACE),
    ("one leaves, two join", EPOCH_3, ["a", "c", "d"], MembershipChange.REPLACE),
    ("several ranks on one node count once", EPOCH_3, ["a", "a", "b", "b"], MembershipChange.RESTART),
    ("the draining node leaves", EPOCH_3.draining(["b"]), ["a"], MembershipChange.DRAIN),
    ("a draining node and an active one leave", EPOCH_3.draining(["b"]), [], MembershipChange.SHRINK),
    ("a draining node that stays is a restart", EPOCH_3.draining(["b"]), ["a", "b"], MembershipChange.RESTART),
    ("a drain while another joins", EPOCH_3.draining(["b"]), ["a", "c"], MembershipChange.REPLACE),
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


def test_a_record_with_launch_tokens_round_trips_and_an_older_one_without_them_reads() -> None:
    tokened = next_membership(EPOCH_3, ["a", "b"], 2, {"a": "t1", "b": "t2", "gone": "t3"})
    assert tokened.instances == {"a": "t1", "b": "t2"}, "only the members' tokens"
    assert Membership.from_json_dict(tokened.to_json_dict()) == tokened
    older = EPOCH_3.to_json_dict()
    assert "instances" not in older and Membership.from_json_dict(older).instances == {}


RECORDED = next_membership(None, ["a", "b"], 2, {"a": "ta", "b": "tb"})
LAUNCHES = [  # (case, each rank's (node, agent, token), the last epoch, the tokens turned away per node id)
    ("distinct ids", [("a", "0", "ta"), ("b", "1", "tb")], RECORDED, {}),
    ("one launch, two ranks", [("a", "0", "ta"), ("a", "0", "ta"), ("b", "1", "tb")], RECORDED, {}),
    ("a second launch of a", [("a", "0", "ta"), ("b", "1", "tb"), ("a", "2", "new")], RECORDED, {"a": {"new"}}),
    ("it ranks first", [("a", "0", "new"), ("a", "1", "ta"), ("b", "2", "tb")], RECORDED, {"a": {"new"}}),
    ("no record: both new", [("a", "0", "t1"), ("a", "1", "t2")], None, {"a": {"t1", "t2"}}),
    ("the recorded launch is gone", [("a", "0", "t1"), ("a", "1", "t2")], RECORDED, {"a": {"t1", "t2"}}),
    ("launches without tokens", [("a", "0", ""), ("a", "1", "")], RECORDED, {"a": {""}}),
]  # fmt: skip


@pytest.mark.parametrize(("case", "gathered", "previous", "away"), LAUNCHES, ids=[c[0] for c in LAUNCHES])
def test_a_second_launch_of_a_node_id_is_told_from_the_recorded_one(case, gathered, previous, away) -> None:
    assert second_launches(gathered, previous) == away


def test_a_drain_marks_only_active_nodes_and_the_next_epoch_has_them_offline() -> None:
    drained = EPOCH_3.draining(["b", "z"])
    assert drained.nodes == {"a": NodeState.ACTIVE, "b": NodeState.DRAINING} and drained.epoch == 3
    assert drained.active == ("a",) and drained.training == ("a", "b")
    after = next_membership(drained, ["a"], 1)
    assert after.nodes == {"a": NodeState.ACTIVE, "b": NodeState.OFFLINE} and after.epoch == 4
    assert Membership.from_json_dict(drained.to_json_dict()) == drained


def test_drain_requests_round_trip_and_a_damaged_file_is_no_request(tmp_path) -> None:
    from lit_psion.core.layout import RunLayout
    from lit_psion.core.membership import read_drain_requests, write_drain_requests

    layout = RunLayout(tmp_path, "r")
    layout.run_dir.mkdir()
    assert read_drain_requests(layout) == {}
    write_drain_requests(layout, {"b": 1.5})
    assert read_drain_requests(layout) == {"b": 1.5}
    layout.drain_requests.write_text("{")
    assert read_drain_requests(layout) == {}
    write_drain_requests(layout, {})
    assert not layout.drain_requests.exists()


SAME, OTHER_LR, OTHER_CKPT = ("ck1", {"lr": 0.003}), ("ck1", {"lr": 0.1}), ("ck0", {"lr": 0.003})


@pytest.mark.parametrize(
    ("views", "incumbents", "away"),
    [
        ([("A", SAME), ("B", SAME)], ["A"], set()),  # nothing differs
        ([("A", SAME), ("B", OTHER_LR)], ["A"], {"B"}),  # a joiner with another learning rate
        ([("B", OTHER_LR), ("A", SAME)], ["A"], {"B"}),  # ... that became rank 0
        ([("A", SAME), ("C", OTHER_CKPT)], ["A", "B"], {"C"}),  # a replacement from another checkpoint
        ([("A", SAME), ("A", SAME), ("C", OTHER_LR), ("C", OTHER_LR)], ["A"], {"C"}),  # two ranks per node
        ([("A", SAME), ("B", OTHER_LR), ("C", OTHER_CKPT)], ["A"], {"B", "C"}),  # two joiners, each unlike
        ([("A", SAME), ("B", OTHER_LR)], [], None),  # a new mesh: nobody is the reference
        ([("A", SAME), ("B", OTHER_LR)], ["Z"], None),  # no node of the last epoch is here
        ([("A", SAME), ("B", OTHER_LR), ("C", SAME)], ["A", "B"], None),  # the incumbents themselves differ
        ([("A", SAME), ("A", OTHER_LR)], ["A"], None),  # one node's own ranks differ
    ],
)
def test_a_joiner_unlike_the_last_epochs_nodes_is_the_one_turned_away(views, incumbents, away) -> None:
    assert mismatched_joiners(views, incumbents) == away



TWO = next_membership(None, ["a", "b"], 2, {"a": "ta", "b": "tb"})
RECEIPTED = Membership(epoch=1, nodes=dict(TWO.nodes), world_size=2)  # a receipt records no launch tokens
TRUST = [  # (case, checkpoint's, receipts', membership.json, the previous epoch; None: refused)
    ("nothing recorded", None, None, None, None),
    ("the receipts only", None, RECEIPTED, None, RECEIPTED),
    ("the file agrees", None, RECEIPTED, TWO, TWO),
    ("the file marks a drain", TWO, RECEIPTED, TWO.draining(["b"]), TWO.draining(["b"])),
    ("the checkpoint marked a drain", TWO.draining(["b"]), RECEIPTED, TWO, TWO.draining(["b"])),
    ("a start stopped before its receipt", TWO, RECEIPTED, next_membership(TWO, ["a", "z"], 2), TWO),
    ("the first start stopped before its receipt", None, None, TWO, None),
    ("an epoch that ended before a checkpoint", EPOCH_3, next_membership(EPOCH_3, ["a"], 1), None,
     next_membership(EPOCH_3, ["a"], 1)),
    ("an edited epoch", TWO, RECEIPTED, Membership(epoch=1000, nodes={"x": NodeState.ACTIVE}, world_size=7), "x"),
    ("an edited node", None, RECEIPTED, next_membership(None, ["a", "x"], 2), "x"),
    ("an edited world size", None, RECEIPTED, Membership(epoch=1, nodes=dict(TWO.nodes), world_size=7), "7"),
    ("an edited launch token", TWO, RECEIPTED, next_membership(None, ["a", "b"], 2, {"a": "ta", "b": "evil"}), "1"),
    ("a later epoch with no receipt", None, None, next_membership(TWO, ["a"], 1), "epoch 2"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "checkpointed", "receipted", "recorded", "previous"), TRUST,
                         ids=[t[0] for t in TRUST])  # fmt: skip
def test_the_previous_epoch_is_what_the_receipts_and_checkpoint_record(
    case, checkpointed, receipted, recorded, previous
) -> None:
    """membership.json has no digest: it only adds drain marks and launch tokens to the epoch the receipts and the
    checkpoint record last, and is refused (exit 5, naming it) where it says something else."""
    from pathlib import Path

    from lit_psion.core.errors import EvidenceError
    from lit_psion.core.membership import trusted_previous

    where = Path("runs/m/membership.json")
    if isinstance(previous, str):
        with pytest.raises(EvidenceError, match=f"'runs/m/membership.json' does not match .*{previous}") as refused:
            trusted_previous(checkpointed, receipted, recorded, where)
        assert refused.value.exit_code == 5
    else:
        assert trusted_previous(checkpointed, receipted, recorded, where) == previous


@pytest.mark.parametrize(("batch", "nnodes", "per_node", "uneven"), [
    (12, "1:3", 1, None), (12, "2:4", 1, None), (8, "1:3", 1, "3"), (8, "3", 1, "3"), (12, "1:2", 3, None),
    (9, "1:2", 3, "6"), (8, "1:5", 1, "3, 5"),
])  # fmt: skip
def test_a_global_batch_must_split_over_every_world_size_the_launch_allows(batch, nnodes, per_node, uneven) -> None:
    from lit_psion.core.membership import check_global_batch, world_sizes

    assert world_sizes("2:4", 2) == [4, 6, 8] and world_sizes("3", 1) == [3]
    if uneven is None:
        check_global_batch(batch, nnodes, per_node)
        return
    with pytest.raises(ConfigError, match=f"batch_size {batch} .* over world size {uneven}, which --nnodes {nnodes}"):
        check_global_batch(batch, nnodes, per_node)


@pytest.mark.parametrize(("nnodes", "per_node"), [("1:99999999999999999999", 1), ("1:13", 1), ("2:5", 3), ("20", 1)])
def test_a_mesh_larger_than_its_global_batch_is_refused_before_its_sizes_are_listed(
    nnodes: str, per_node: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mesh launch --nnodes 1:99999999999999999999` listed every world size first and filled the machine's memory
    (killed at 21 GB): no world size larger than the global batch can split it."""
    from lit_psion.core import membership

    def listing(*args: object) -> list[int]:
        raise AssertionError("the sizes were listed")

    monkeypatch.setattr(membership, "world_sizes", listing)
    with pytest.raises(ConfigError, match=r"more than batch_size 12 \(the global batch\) can be split over; give a "
                                          rf"--nnodes MAX of at most {12 // per_node}"):  # fmt: skip
        membership.check_global_batch(12, nnodes, per_node)
