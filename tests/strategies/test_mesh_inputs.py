"""What a mesh refuses in one line, and what it trusts: launch arguments checked before the store is contacted, a
global batch that some world size of ``--nnodes`` cannot split, and a ``membership.json`` that is damaged or does not
match the run's receipts (docs/elastic.md)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import RunLayout, read_json
from lit_psion.core.membership import MESH_SETTINGS_ENV
from tests.strategies.test_elastic import _fit, _free_port, _own_process_group, memberships, mesh_run  # noqa: F401

LAUNCH = ["mesh", "launch", "--config", "fixtures/tiny.yaml", "--run-id", "m1", "--join-timeout", "60"]

REFUSED = [  # (case, arguments, what the one line says)
    ("no processes per node", ["--nproc-per-node", "0"], "--nproc-per-node must be >= 1, got 0"),
    ("negative processes per node", ["--nproc-per-node", "-1"], "--nproc-per-node must be >= 1, got -1"),
    ("negative restarts", ["--max-restarts", "-1"], "--max-restarts must be >= 0, got -1"),
    ("a node id with a space", ["--node-id", "a b"], "--node-id 'a b' is not a plain name"),
    ("a node id with a dot", ["--node-id", "a.b"], "--node-id 'a.b' is not a plain name"),
    ("a batch world size 3 cannot split", ["--nnodes", "1:3", "--data.batch_size", "8"],
     "batch_size 8 (the global batch) cannot be split evenly over world size 3, which --nnodes 1:3 lets the mesh "
     "take (world sizes 1, 2, 3); give a --data.batch_size every one divides (such as 12)"),
    ("the config's batch, given with =", ["--nnodes", "3", "--data.batch_size=16"], "world size 3"),
    ("the config's own batch (8)", ["--nnodes", "1:3"], "batch_size 8 (the global batch)"),
    ("another strategy", ["--trainer.strategy", "ddp"], "--trainer.strategy sets the strategy 'ddp', but `mesh "
     "launch` trains with elastic_mesh (DDP with receipted membership epochs); leave the strategy out"),
    ("another strategy, given with =", ["--trainer.strategy=transactional_ddp"], "'transactional_ddp'"),
    ("a sharded overlay", ["--config", "configs/overlays/fsdp.yaml"], "configs/overlays/fsdp.yaml sets the strategy"),
    ("processes per node count", ["--nnodes", "1:2", "--nproc-per-node", "3", "--data.batch_size", "9"],
     "over world size 6, which --nnodes 1:2 x 3 processes per node"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "arguments", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_launch_argument_no_mesh_can_run_is_one_line_before_the_store(
    capsys: pytest.CaptureFixture, case: str, arguments: list[str], message: str
) -> None:
    """--nproc-per-node 0 used to say the node was drained (exit 0), --max-restarts -1 ended in torchrun's
    traceback, a node id with a space was taken, and a batch a joiner's world size cannot split stopped every node
    of the mesh when the joiner came."""
    given = {"--node-id": "A", "--nnodes": "1:2", **dict(zip(arguments[::2], arguments[1::2], strict=False))}
    given = {flag: value for flag, value in given.items() if "=" not in flag}
    extra = [argument for argument in arguments if "=" in argument]
    started = time.monotonic()
    store = ["--store", f"127.0.0.1:{_free_port()}"]
    assert main([*LAUNCH, *store, *(arg for pair in given.items() for arg in pair), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert time.monotonic() - started < 5, "no store was waited for"


@pytest.mark.parametrize("batch", [["--data.batch_size", "12"], ["--data.batch_size=6"]])
def test_a_batch_every_world_size_divides_goes_on_to_the_store(capsys: pytest.CaptureFixture, batch: list) -> None:
    launch = [*LAUNCH, "--node-id", "A", "--nnodes", "1:3", "--store", f"127.0.0.1:{_free_port()}", "--join-timeout",
              "1", *batch]  # fmt: skip
    assert main(launch) == 12, "past the checks: nothing listens at the store"
    assert "nothing listens at --store" in capsys.readouterr().err


def test_a_worker_refuses_a_batch_a_world_size_of_the_launch_cannot_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The data's own batch (no --data.batch_size anywhere `mesh launch` reads) is checked by every worker at setup,
    against the --nnodes range the launcher exports, before a step trains."""
    monkeypatch.setenv(MESH_SETTINGS_ENV, json.dumps({"nnodes": "1:3"}))
    capsys.readouterr()
    assert _fit(tmp_path, "A", 3, monkeypatch, run_id="m") == 2
    assert "batch_size 8 (the global batch) cannot be split evenly over world size 3" in capsys.readouterr().err
    assert not (RunLayout(tmp_path, "m").receipts.is_file() and '"trainer_step"' in
                RunLayout(tmp_path, "m").receipts.read_text())  # fmt: skip
    monkeypatch.setenv(MESH_SETTINGS_ENV, json.dumps({"nnodes": "1:2"}))
    assert _fit(tmp_path, "A", 3, monkeypatch, run_id="m") == 0


DAMAGED = [  # (case, membership.json's bytes, what the line says of them)
    ("truncated JSON", '{"epoch": "x"', "Expecting"),
    ("an unknown node state", '{"epoch": 1, "nodes": {"A": "bogus"}, "world_size": 1}', "'bogus' is not a valid"),
    ("a list", '["A"]', "a JSON list, not an object"),
    ("no nodes", '{"epoch": 1, "world_size": 1}', "missing 'nodes'"),
]  # fmt: skip


@pytest.fixture
def run(request: pytest.FixtureRequest, tmp_path: Path) -> RunLayout:
    """A copy of test_elastic's completed one-node mesh run (node-a, 3 steps, one membership epoch) to damage."""
    completed: RunLayout = request.getfixturevalue("mesh_run")
    shutil.copytree(completed.run_dir, tmp_path / completed.run_id)
    return RunLayout(tmp_path, completed.run_id)


UNLIKE_ITS_RECEIPTS = [  # (case, membership.json as edited): docs/elastic.md says status and drain refuse these
    ("a node added", {"epoch": 1, "world_size": 1, "nodes": {"node-a": "active", "C": "active"}}),
    ("another epoch", {"epoch": 9, "world_size": 1, "nodes": {"node-a": "active"}}),
    ("another world size", {"epoch": 1, "world_size": 3, "nodes": {"node-a": "active"}}),
]


@pytest.mark.parametrize(("case", "record"), UNLIKE_ITS_RECEIPTS, ids=[u[0] for u in UNLIKE_ITS_RECEIPTS])
@pytest.mark.parametrize("command", [["status"], ["drain", "C"]])
def test_mesh_status_and_drain_refuse_a_membership_file_unlike_the_receipts(
    run: RunLayout, capsys: pytest.CaptureFixture, command: list, case: str, record: dict
) -> None:
    """They read the file alone: status showed a node C that never was (exit 0), and drain recorded a request to
    drain it."""
    layout = run
    layout.membership.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["mesh", command[0], str(layout.run_dir), *command[1:]]) == 5
    err = capsys.readouterr().err
    assert "does not match the run's receipts and checkpoint" in err and err.count("\n") == 1, err
    assert not layout.drain_requests.exists()


def test_mesh_status_without_membership_json_shows_the_receipted_epoch(
    run: RunLayout, capsys: pytest.CaptureFixture
) -> None:
    """The fix a damaged file's line gives (remove it) made status call the run "not a mesh run"."""
    layout = run
    layout.membership.unlink()
    capsys.readouterr()
    assert main(["mesh", "status", str(layout.run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{layout.run_id}: completed at step 3, membership epoch 1, world size 1" in out and "node-a" in out, out


@pytest.mark.parametrize(("case", "text", "reason"), DAMAGED, ids=[d[0] for d in DAMAGED])
@pytest.mark.parametrize("command", [["status"], ["drain", "node-a"]])
def test_mesh_status_and_drain_name_a_damaged_membership_file(
    run: RunLayout, capsys: pytest.CaptureFixture, command: list, case: str, text: str, reason: str
) -> None:
    layout = run
    layout.membership.write_text(text)
    capsys.readouterr()
    assert main(["mesh", command[0], str(layout.run_dir), *command[1:]]) == 5
    err = capsys.readouterr().err
    assert f"'{layout.membership}' is damaged" in err and reason in err and "Traceback" not in err, err


EDITED = {"epoch": 1000, "nodes": {"X": "active", "node-a": "offline"}, "world_size": 7, "instances": {}}


@pytest.mark.parametrize(("case", "text", "reason"), [
    *DAMAGED[:2], ("edited", json.dumps(EDITED), "does not match the run's receipts and checkpoint: it says epoch"),
])  # fmt: skip
def test_a_mesh_start_refuses_a_membership_file_that_is_damaged_or_unlike_its_receipts(
    run: RunLayout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, case: str,
    text: str, reason: str,
) -> None:  # fmt: skip
    """An edited membership.json used to set the next epoch (1001) and its previous members (a node X that never
    was), and the receipts then verified."""
    layout = run
    layout.membership.write_text(text)
    before = layout.receipts.read_bytes()
    capsys.readouterr()
    assert _fit(tmp_path, "node-a", 6, monkeypatch, run_id=layout.run_id) == 5
    err = capsys.readouterr().err
    assert str(layout.membership) in err and reason in err, err
    assert layout.receipts.read_bytes()[: len(before)] == before and '"epoch": 1000' not in layout.receipts.read_text()
    layout.membership.unlink()  # the fix the line gives
    assert _fit(tmp_path, "node-a", 6, monkeypatch, run_id=layout.run_id) == 0
    assert [(m["epoch"], m["previous_members"]) for m in memberships(layout)][-1] == (2, {"node-a": "active"})


TRUSTED = [  # (case, membership.json as a killed or drained mesh leaves it, the next epoch's previous members)
    ("a start stopped before it trained", {"epoch": 2, "world_size": 2, "nodes": {"node-a": "active", "z": "active"}},
     {"node-a": "active"}),
    ("a drain marked after the checkpoint", {"epoch": 1, "world_size": 1, "nodes": {"node-a": "draining"}},
     {"node-a": "draining"}),
]  # fmt: skip


@pytest.mark.parametrize(("case", "record", "previous"), TRUSTED, ids=[t[0] for t in TRUSTED])
def test_a_mesh_killed_between_its_membership_file_and_its_receipt_resumes(
    run: RunLayout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, record: dict, previous: dict
) -> None:
    layout = run
    layout.membership.write_text(json.dumps(record))
    assert _fit(tmp_path, "node-a", 6, monkeypatch, run_id=layout.run_id) == 0
    last = memberships(layout)[-1]
    assert (last["epoch"], last["previous_members"], last["previous_world_size"]) == (2, previous, 1)
    assert read_json(layout.membership)["epoch"] == 2
    assert main(["receipts", "verify", str(layout.run_dir)]) == 0


@pytest.mark.parametrize(("stopping", "outcome"), [(False, "membership_changed"), (True, None)])
def test_a_mesh_launch_told_to_stop_pauses_with_the_signal_as_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopping: bool, outcome: str | None
) -> None:
    """SIGTERM or Ctrl-C to `mesh launch` pauses the run: its training_run receipt says SIGTERMException (the
    strategy names no mesh cause), not membership_changed; a stop for a join or a drain still says that."""
    from lit_psion.core.membership import NODE_MARKERS_ENV, STOPPING
    from lit_psion.strategies import elastic

    monkeypatch.setenv(NODE_MARKERS_ENV, str(tmp_path))
    if stopping:
        (tmp_path / STOPPING).touch()
    monkeypatch.setattr(elastic, "_stopped", elastic.MeshStop(node="A", step=4, drained=False, signalled=True,
                                                              drain=False))  # fmt: skip
    assert elastic.ElasticMeshStrategy().stop_reason() == outcome
    monkeypatch.setattr(elastic, "_stopped", None)
    assert elastic.ElasticMeshStrategy().stop_reason() is None, "a worker that did not stop for the mesh"


def test_doctor_holds_membership_json_to_the_epochs_the_receipts_record(run: RunLayout,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """doctor said "all artifacts verified" of a run whose membership.json said epoch 1000 and a node X that never
    was: the file a worker-group start continues from, and the reference that decides which joiner is turned away."""
    layout = run
    capsys.readouterr()
    assert main(["doctor", str(layout.run_dir)]) == 0
    assert "ok   membership.json: 1 receipted epoch(s), each following the last; the mesh continues from epoch 1" \
        in capsys.readouterr().out
    record = {"epoch": 1000, "nodes": {"X": "active", "node-a": "offline"}, "world_size": 7, "instances": {}}
    layout.membership.write_text(json.dumps(record))
    assert main(["doctor", str(layout.run_dir)]) == 5
    out = capsys.readouterr().out
    assert "FAIL membership.json:" in out and "does not match the run's receipts and checkpoint" in out, out


@pytest.mark.parametrize("given", [("--trainer", '{"strategy": "ddp"}'), ("--trainer.strategy", "ddp")])
def test_a_worker_of_mesh_launch_refuses_another_strategy_however_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, given: tuple[str, str]
) -> None:
    """`--trainer '{"strategy": "ddp"}'` passed the launcher's check of its flags and configs, came after the
    launcher's --trainer.strategy elastic_mesh, and trained plain DDP: no membership epoch, receipt or drain."""
    from tests.helpers import fit

    monkeypatch.setenv(MESH_SETTINGS_ENV, json.dumps({"nnodes": "1"}))
    monkeypatch.setenv("LIT_PSION_NODE_ID", "A")
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.strategy", "elastic_mesh", *given) == 2
    err = capsys.readouterr().err
    assert "the strategy is 'ddp', but `mesh launch` trains with elastic_mesh" in err and err.count("\n") == 1, err
    assert not [path for path in tmp_path.iterdir() if path.is_dir()]


def test_mesh_status_of_a_run_whose_checkpoint_manifest_nests_too_deep_is_no_bug(
    run: RunLayout, capsys: pytest.CaptureFixture
) -> None:
    """RecursionError from the pointed checkpoint's manifest ended status and drain as exit 1."""
    layout = run
    (layout.checkpoints / read_json(layout.pointer)["checkpoint"] / "manifest.json").write_text("[" * 200000)
    capsys.readouterr()
    assert main(["mesh", "status", str(layout.run_dir)]) == 0
    assert "unexpected error" not in capsys.readouterr().err
