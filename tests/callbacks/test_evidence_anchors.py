"""The receipt chain is anchored: forged or lost evidence is caught; a provably torn tail is repaired on resume."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.chain import Receipt, genesis, verify_log
from lit_psion.core.digest import sha256_json
from lit_psion.core.errors import EvidenceError
from lit_psion.core.layout import RunLayout
from lit_psion.core.run import read_latest, write_latest
from lit_psion.runs import load_run
from tests.helpers import callbacks_config, fit, fit_subprocess


def lines(layout: RunLayout) -> list[str]:
    return layout.receipts.read_text().splitlines()


def write_lines(layout: RunLayout, kept: list[str], tail: str = "\n") -> None:
    layout.receipts.write_text("\n".join(kept) + tail)


def forge(run_id: str, seq: int, prev: str, kind: str = "trainer_step", body: dict | None = None) -> str:
    """A receipt line with a correct digest, seq and prev_digest: what anyone can write without a key."""
    fields = {"schema_version": 2, "kind": kind, "run_id": run_id, "seq": seq, "prev_digest": prev,
              "created_at": 0.0, "body": body or {"stage_id": "pretrain", "step_in": 12, "step_out": 13,
                                                  "batch_digest": "", "cursor": None, "loss": 0.001, "lr": 0.0,
                                                  "optimizer": "AdamW", "checkpoint": None}}  # fmt: skip
    return json.dumps({**fields, "digest": sha256_json(fields)})


def set_run_json(layout: RunLayout, **changes: object) -> None:
    record = read_json(layout.run_file)
    record.update(changes)
    layout.run_file.write_text(json.dumps(record))


def last_digest(kept: list[str]) -> str:
    return json.loads(kept[-1])["digest"]


def append_after_seal(layout: RunLayout) -> None:
    kept = lines(layout)
    write_lines(layout, [*kept, forge(layout.run_id, len(kept), last_digest(kept))])


def cut_seal_and_fix_run_json(layout: RunLayout) -> None:
    kept = lines(layout)[:-2]  # the completed receipt and the seal
    write_lines(layout, kept)
    set_run_json(layout, receipts_head=last_digest(kept))


def truncate_and_null_head(layout: RunLayout) -> None:
    write_lines(layout, lines(layout)[:8])
    set_run_json(layout, receipts_head=None, status="paused")


def truncate_and_point_head(layout: RunLayout) -> None:
    kept = lines(layout)[:8]
    write_lines(layout, kept)
    set_run_json(layout, receipts_head=last_digest(kept), status="paused")


def _unsealed_with_head_nulled(status: str) -> Callable[[RunLayout], None]:
    """The run ended ``status`` (its seal cut off), its head nulled in run.json, and a forged step appended."""

    def harm(layout: RunLayout) -> None:
        kept = lines(layout)[:-2]
        write_lines(layout, [*kept, forge(layout.run_id, len(kept), last_digest(kept))])
        set_run_json(layout, receipts_head=None, status=status)

    return harm


def _rechain(layout: RunLayout, first_prev: str) -> None:
    """Rebuild every digest of the run's chain from ``first_prev``: valid links, but not this run's genesis."""
    prev, rebuilt = first_prev, []
    for seq, line in enumerate(lines(layout)):
        receipt = json.loads(line)
        rebuilt.append(forge(layout.run_id, seq, prev, receipt["kind"], receipt["body"]))
        prev = json.loads(rebuilt[-1])["digest"]
    write_lines(layout, rebuilt)
    set_run_json(layout, receipts_head=prev)


def rechain_from_zeros(layout: RunLayout) -> None:
    _rechain(layout, "0" * 64)  # a chain tied to no run


def foreign_chain(layout: RunLayout) -> None:
    _rechain(layout, genesis("another-run"))  # another run's chain, renamed to this run's id


def edit_a_loss(layout: RunLayout) -> None:
    kept = lines(layout)
    receipt = json.loads(kept[3])
    receipt["body"]["loss"] = 0.0
    kept[3] = json.dumps(receipt)
    write_lines(layout, kept)


def edit_a_loss_and_rehash_it(layout: RunLayout) -> None:
    kept = lines(layout)
    receipt = json.loads(kept[3])
    kept[3] = forge(layout.run_id, receipt["seq"], receipt["prev_digest"], receipt["kind"],
                    {**receipt["body"], "loss": 0.0})  # fmt: skip
    write_lines(layout, kept)


def tear_the_last_line(layout: RunLayout) -> None:
    layout.receipts.write_bytes(layout.receipts.read_bytes() + b'{"schema_version": 2, "kind": "trai')


def cut_the_seal_mid_line(layout: RunLayout) -> None:
    """What a kill mid-append leaves, but of the seal run.json records as the head: no kill does that (the head is
    recorded once durable), and receipts verify said "a resume takes it back", which the resume refused."""
    layout.receipts.write_bytes(layout.receipts.read_bytes()[:-50])


FORGERIES = [
    ("a receipt appended after the seal", append_after_seal, "after_seal"),
    ("the seal cut off and run.json's head moved back", cut_seal_and_fix_run_json, "does not end with its seal"),
    ("truncated with run.json's head nulled", truncate_and_null_head, "recorded head"),
    ("truncated with run.json's head moved back", truncate_and_point_head, "recorded head"),
    ("a paused run's head nulled, a step appended", _unsealed_with_head_nulled("paused"), "after_end"),
    ("a failed run's head nulled, a step appended", _unsealed_with_head_nulled("failed"), "after_end"),
    ("rechained from an unbound genesis", rechain_from_zeros, "unbound"),
    ("another run's chain", foreign_chain, "unbound"),
    ("an edited loss", edit_a_loss, "edited"),
    ("an edited loss with its digest recomputed", edit_a_loss_and_rehash_it,
     "line 5: edited: seq 4 is in place, but its prev_digest is not the digest of line 4: line 4 was edited"),
    ("a torn last line", tear_the_last_line, "torn"),
    ("the recorded seal cut mid-line", cut_the_seal_mid_line, "truncated: the last line is torn, and the recorded "
     "head"),
]


def copy_run(run: RunLayout, root: Path) -> RunLayout:
    """A copy of ``run`` under ``root`` (with the same run id), to harm without touching the original."""
    copy = RunLayout(root, run.run_id)
    shutil.copytree(run.run_dir, copy.run_dir)
    return copy


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    root = tmp_path_factory.mktemp("anchors")
    assert fit("--trainer.default_root_dir", str(root)) == 0
    return RunLayout(root, read_latest(root))


def _refused(copy: RunLayout, harm: Callable[[RunLayout], None], reason: str, capsys: pytest.CaptureFixture) -> None:
    """The copy verifies; once harmed, receipts verify and doctor refuse it with exit 5, naming ``reason``."""
    assert main(["receipts", "verify", str(copy.run_dir)]) == 0
    harm(copy)
    capsys.readouterr()
    assert main(["receipts", "verify", str(copy.run_dir)]) == 5
    assert reason in capsys.readouterr().err
    assert main(["doctor", str(copy.run_dir)]) == 5
    assert "FAIL receipts.jsonl" in capsys.readouterr().out
    if reason != "torn":  # what a kill leaves: read as far as the chain verifies, as a resume mends it
        with pytest.raises(EvidenceError):  # the Python API reads no run back that the verifiers refuse
            load_run(copy.run_dir)


@pytest.mark.parametrize(("name", "harm", "reason"), FORGERIES, ids=[f[0] for f in FORGERIES])
def test_forged_or_lost_evidence_fails_verify_and_doctor(
    completed: RunLayout, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, harm: Callable, reason: str
) -> None:
    _refused(copy_run(completed, tmp_path), harm, reason, capsys)


def test_the_first_receipt_is_bound_to_its_run(completed: RunLayout) -> None:
    first = Receipt(**json.loads(lines(completed)[0]))
    assert first.prev_digest == genesis(completed.run_id) and first.run_id == completed.run_id
    assert not verify_log(completed.receipts, run_id="another-run").ok


def test_every_durable_checkpoint_records_the_head_and_a_completed_run_is_sealed(completed: RunLayout) -> None:
    digests = [json.loads(line)["digest"] for line in lines(completed)]
    for checkpoint in completed.checkpoint_dirs():
        head = read_json(checkpoint / "manifest.json")["receipts_head"]
        step = int(checkpoint.name.removeprefix("step-"))
        chain = [json.loads(line) for line in lines(completed)[: digests.index(head) + 1]]
        steps = [r["body"]["step_out"] for r in chain if r["kind"] == "trainer_step"]
        assert steps == list(range(1, step + 1)), "every step up to the checkpoint is receipted before it"
    assert json.loads(lines(completed)[-1])["kind"] == "chain_seal"


def _torn_run(tmp_path: Path) -> RunLayout:
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "6") == 0
    layout = RunLayout(tmp_path, read_latest(tmp_path))
    tear_the_last_line(layout)
    return layout


def test_a_resume_repairs_a_provably_torn_tail_and_receipts_it(tmp_path: Path) -> None:
    layout = _torn_run(tmp_path)
    torn = len(b'{"schema_version": 2, "kind": "trai')
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "9", "--ckpt_path", "last") == 0
    chain = [json.loads(line) for line in lines(layout)]
    repair = next(r["body"] for r in chain if r["kind"] == "chain_repair")
    assert repair["dropped_bytes"] == torn and repair["anchor"] == read_json(
        layout.checkpoint(6) / "manifest.json")["receipts_head"]  # fmt: skip
    assert main(["receipts", "verify", str(layout.run_dir)]) == 0


UNREPAIRABLE = [
    ("a torn line after a cut below the checkpoint's head",
     lambda layout: write_lines(layout, lines(layout)[:4], tail='\n{"torn'), "truncated"),
    ("a complete garbage line in the middle",
     lambda layout: write_lines(layout, [*lines(layout)[:5], "not json", *lines(layout)[5:]]), "malformed"),
    ("an edited receipt before the tail", edit_a_loss, "edited"),
]


@pytest.mark.parametrize(("name", "harm", "reason"), UNREPAIRABLE, ids=[u[0] for u in UNREPAIRABLE])
def test_a_resume_refuses_evidence_it_cannot_prove_torn(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, harm: Callable, reason: str
) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "6") == 0
    layout = RunLayout(tmp_path, read_latest(tmp_path))
    harm(layout)
    before = layout.receipts.read_bytes()
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "9", "--ckpt_path", "last") == 5
    assert reason in capsys.readouterr().err
    assert layout.receipts.read_bytes() == before, "a refused resume leaves the evidence as it was"


def test_a_kill_right_after_a_checkpoint_leaves_every_step_up_to_it_receipted(tmp_path: Path) -> None:
    kill = callbacks_config(tmp_path / "kill.json", ("KillAfterPointer", {"step": 6}))
    result = fit_subprocess("--config", kill, "--trainer.default_root_dir", str(tmp_path))
    assert result.returncode == -9, result.stderr[-2000:]
    layout = RunLayout(tmp_path, read_latest(tmp_path))
    assert read_json(layout.pointer)["step"] == 6
    steps = [json.loads(line)["body"]["step_out"] for line in lines(layout) if '"trainer_step"' in line]
    assert steps == list(range(1, 7))
    assert fit("--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last") == 0
    assert main(["doctor", str(layout.run_dir)]) == 0


def _after_seal(kinds: list[tuple[str, dict]]) -> Callable[[RunLayout], None]:
    """Forged receipts with valid links appended after the seal, run.json left as the run wrote it."""

    def harm(layout: RunLayout) -> None:
        kept = lines(layout)
        for kind, body in kinds:
            kept.append(forge(layout.run_id, len(kept), last_digest(kept), kind, body))
        write_lines(layout, kept)

    return harm


RUN = {"stage_id": "pretrain", "status": "active", "config_digest": None, "data_manifest_digest": None,
       "model_signature": None, "checkpoint_lineage": [], "outcome": None}  # fmt: skip
STEP = {"stage_id": "pretrain", "step_in": 12, "step_out": 13, "batch_digest": "", "cursor": None, "loss": 0.001,
        "lr": 0.0, "optimizer": "AdamW", "checkpoint": None}  # fmt: skip
SUBTLE_FORGERIES = [
    ("a whole resumed session forged after the seal",
     _after_seal([("training_run", {**RUN, "event": "resumed"}), ("trainer_step", STEP),
                  ("training_run", {**RUN, "event": "completed", "status": "completed"})]), "after_end"),
    ("a chain repair with a made-up body", _after_seal([("chain_repair", {"note": "trained on the test set"})]),
     "malformed"),
    ("two chain repairs",
     _after_seal([("chain_repair", {"dropped_bytes": 1, "dropped_sha256": "0", "anchor": "0"})] * 2), "after_seal"),
]


@pytest.mark.parametrize(("name", "harm", "reason"), SUBTLE_FORGERIES, ids=[f[0] for f in SUBTLE_FORGERIES])
def test_receipts_forged_after_a_finished_run_fail_verify(
    completed: RunLayout, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, harm: Callable, reason: str
) -> None:
    _refused(copy_run(completed, tmp_path), harm, reason, capsys)


def test_an_edited_seal_count_fails_verify(completed: RunLayout, tmp_path: Path) -> None:
    copy = copy_run(completed, tmp_path)
    kept = lines(copy)
    seal = json.loads(kept[-1])
    kept[-1] = forge(copy.run_id, seal["seq"], seal["prev_digest"], "chain_seal", {**seal["body"], "receipts": 999})
    write_lines(copy, kept)
    set_run_json(copy, receipts_head=last_digest(kept))
    assert main(["receipts", "verify", str(copy.run_dir)]) == 5


def test_a_refused_resume_leaves_a_completed_run_verifiable(completed: RunLayout, tmp_path: Path) -> None:
    copy = copy_run(completed, tmp_path)
    write_latest(tmp_path, copy.run_id)
    before = copy.receipts.read_bytes()
    root = ("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "15", "--ckpt_path", "last")
    assert fit(*root, "--model.init_args.decoder.dropout", "0.0") == 4
    assert copy.receipts.read_bytes() == before
    assert main(["receipts", "verify", str(copy.run_dir)]) == 0
    assert fit(*root) == 0 and main(["receipts", "verify", str(copy.run_dir)]) == 0


def test_a_resume_refuses_a_chain_cut_below_run_json_s_head(completed: RunLayout, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    copy = copy_run(completed, tmp_path)
    write_latest(tmp_path, copy.run_id)
    write_lines(copy, lines(copy)[:-2])
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "15", "--ckpt_path", "last") == 5
    assert "truncated" in capsys.readouterr().err
    assert main(["receipts", "verify", str(copy.run_dir)]) == 5, "the cut is not covered up"


def test_a_last_receipt_without_its_newline_is_kept_and_the_chain_continues(tmp_path: Path) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "6") == 0
    layout = RunLayout(tmp_path, read_latest(tmp_path))
    layout.receipts.write_bytes(layout.receipts.read_bytes()[:-1])
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "9", "--ckpt_path", "last") == 0
    assert main(["receipts", "verify", str(layout.run_dir)]) == 0
    assert not any(json.loads(line)["kind"] == "chain_repair" for line in lines(layout))


def test_a_full_disk_during_an_append_stops_with_exit_6_and_an_intact_chain(tmp_path: Path) -> None:
    full = callbacks_config(tmp_path / "full.json", ("FullDiskAtStep", {"step": 5}))
    assert fit("--config", full, "--trainer.default_root_dir", str(tmp_path / "runs")) == 6
    layout = RunLayout(tmp_path / "runs", read_latest(tmp_path / "runs"))
    assert layout.receipts.read_bytes().endswith(b"\n")
    record = read_json(layout.run_file)
    assert (record["status"], record["failure_class"]) == ("failed", "evidence_flush_failed")
    assert main(["receipts", "verify", str(layout.run_dir)]) == 0
    assert fit("--trainer.default_root_dir", str(tmp_path / "runs"), "--ckpt_path", "last") == 0
    assert main(["doctor", str(layout.run_dir)]) == 0


REFUSED_WITH_A_TORN_TAIL = [
    ("another model", ("--model.init_args.decoder.n_layer", "3"), 4),
    ("other data", ("--data.sample_stride", "8"), 3),
    ("nothing left to train", ("--trainer.max_steps", "6"), 2),
]


@pytest.mark.parametrize(("name", "change", "code"), REFUSED_WITH_A_TORN_TAIL,
                         ids=[r[0] for r in REFUSED_WITH_A_TORN_TAIL])  # fmt: skip
def test_a_refused_resume_leaves_a_torn_tail_for_the_right_resume_to_repair(
    tmp_path: Path, name: str, change: tuple[str, ...], code: int
) -> None:
    layout = _torn_run(tmp_path)
    before = layout.receipts.read_bytes()
    resume = ("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "9", "--ckpt_path", "last")
    assert fit(*resume, *change) == code
    assert layout.receipts.read_bytes() == before, "the refused resume neither cut the tail nor receipted a repair"
    assert fit(*resume) == 0
    assert main(["receipts", "verify", str(layout.run_dir)]) == 0


def test_a_resume_with_nothing_left_to_train_is_refused_and_writes_nothing(
    completed: RunLayout, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = copy_run(completed, tmp_path)
    write_latest(tmp_path, copy.run_id)
    before = {p.name: p.read_bytes() for p in copy.run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    step = read_json(copy.run_file)["global_step"]
    for max_steps in (step, step - 1):
        capsys.readouterr()
        assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", str(max_steps),
                   "--ckpt_path", "last") == 2  # fmt: skip
        assert f"already at step {step}" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in copy.run_dir.iterdir() if p.is_file() and p.name != ".lock"} == before
    assert main(["receipts", "verify", str(copy.run_dir)]) == 0
