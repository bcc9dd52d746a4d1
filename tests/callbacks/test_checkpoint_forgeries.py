"""What a resume must refuse though every digest is consistent: a forged newest checkpoint, a trainer state
Lightning cannot restore, a symlinked pointer or index; and what it must survive: a kill between a durable
checkpoint and its receipt, a full disk while the run's records are written."""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lit_psion.checkpoint_io import STATE
from lit_psion.cli import main
from lit_psion.core import atomic_write_json, read_json, sha256_file
from lit_psion.core.checkpoint import resolve_checkpoint
from lit_psion.core.run import read_latest, write_latest
from lit_psion.report import write_dashboard
from tests.helpers import callbacks_config, fit, fit_subprocess, forge_newest_checkpoint, head_of_step


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "9") == 0
    return root / read_latest(root)


@pytest.mark.parametrize("writes", ["sync", "async", "async-accumulating", "sync-receipts-every-2"])
def test_a_kill_between_a_durable_checkpoint_and_its_receipt_resumes_from_that_checkpoint(
    tmp_path: Path, writes: str
) -> None:
    """Accumulating, the micro-batches after a step's last one receipt that step again, after the head the
    checkpoint records: not a chain that went on from an earlier step. Receipting every 2 steps, step 9's
    checkpoint records step 8's head: within the interval, not a forgery anchored where the chain ended."""
    step = 9 if writes.endswith("every-2") else 6
    killed = callbacks_config(tmp_path / "kill.json", ("KillBeforeDurableReceipt", {"step": step}))
    common = ("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "12",
              "--checkpoint.async_write", str(writes.startswith("async")).lower(),
              *(("--trainer.accumulate_grad_batches", "2") if writes.endswith("accumulating") else ()),
              *(("--receipts.every_n_steps", "2") if writes.endswith("every-2") else ()))  # fmt: skip
    assert fit_subprocess(*common, "--config", killed).returncode == -9
    run = tmp_path / read_latest(tmp_path)
    assert read_json(run / "checkpoints" / "pointer.json")["step"] == step
    assert fit(*common, "--ckpt_path", "last") == 0
    chain = [json.loads(line)["body"] for line in (run / "receipts.jsonl").read_text().splitlines()]
    late = [r for r in chain if r.get("durability") == "durable" and "receipted on resume" in (r.get("reason") or "")]
    assert [r["step"] for r in late] == [step], "resumed from the checkpoint whose receipt the kill prevented"
    assert main(["doctor", str(run)]) == 0


def test_a_kill_before_the_first_pointer_is_not_damage_to_ckpt_verify_or_doctor(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A deleted pointer was exit 0 to ``ckpt verify`` and exit 4 to ``doctor``. The pointer is written before a
    checkpoint's durable receipt: missing with none receipted, a kill left it (both say ok); missing after one,
    it was lost (both exit 4, tested above)."""
    killed = callbacks_config(tmp_path / "kill.json", ("KillBeforeDurableReceipt", {"step": 3}))
    assert fit_subprocess("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "9",
                          "--config", killed).returncode == -9  # fmt: skip
    run = tmp_path / read_latest(tmp_path)
    (run / "checkpoints" / "pointer.json").unlink()  # the kill one instant earlier, before the pointer's rename
    capsys.readouterr()
    assert main(["ckpt", "verify", str(run)]) == 0
    assert main(["doctor", str(run)]) == 0
    assert "pointer.json: none yet" in capsys.readouterr().out
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "9", "--ckpt_path", "last") == 0
    assert main(["doctor", str(run)]) == 0


FORGERIES = [  # (name, the step the forged copy of step 6's checkpoint claims, its anchor: a step's head or a digest)
    ("a step past what the chain reached", 10, 6, "go on from step 6"),
    ("a step the chain trained past from the head it names", 7, 6, "go on from step 6"),
    ("a head past the step it claims", 7, 8, "had reached step 8"),
    ("the chain's last head, under the next step", 9, 8, "had reached only step 8"),  # all three were trusted on a
    ("the chain's last head, under a later step", 12, 8, "had reached only step 8"),  # run that was not sealed
    ("an earlier head, under the next step", 7, 5, "go on from step 5"),
]


@pytest.mark.parametrize(("name", "step", "anchor", "message"), FORGERIES, ids=[f[0] for f in FORGERIES])
def test_a_forged_newest_checkpoint_without_its_receipt_is_refused_and_last_falls_back(
    killed_run: Path, tmp_path: Path, name: str, step: int, anchor: int | str, message: str
) -> None:
    """A newest checkpoint may lack its receipt (a kill between the two), so one was trusted on the manifest alone:
    a copy of an older checkpoint re-hashed under a later step, with the pointer moved to it, was trained from and
    then receipted as genuine. Its manifest's chain head and step must fit the chain."""
    from lit_psion.core.audit import receipted_checkpoints
    from lit_psion.core.layout import RunLayout

    run = tmp_path / killed_run.name
    shutil.copytree(killed_run, run)
    forged = forge_newest_checkpoint(run, step, head_of_step(run, anchor) if isinstance(anchor, int) else anchor)
    layout, rejected = RunLayout.of(run), []
    resolved = resolve_checkpoint(layout, rejected, quiet=True, receipted=receipted_checkpoints(layout))
    assert resolved.step == 6
    assert message in rejected[0].reason and "did not write it" in rejected[0].reason
    assert main(["ckpt", "verify", str(forged)]) == 4


@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "their weights damaged"])
def test_a_checkpoint_whose_head_the_log_does_not_hold_stops_a_resume_as_receipts_verify_does(
    killed_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, damaged: bool
) -> None:
    """The log cut below two checkpoints' heads, run.json moved back to the cut: `receipts verify` said truncated
    (exit 5), but a resume called those checkpoints ones "the run's fit did not write", fell back to step 3,
    retrained and overwrote them, and every verifier then said ok: the cut was laundered. A checkpoint's head is
    durable before the checkpoint is written, so a head the log lacks is never a crash's doing. With a byte of
    step 6's weights flipped too (the pointer moved back to step 3), a resume passed it over as damaged, its head
    with it: exit 0, step 6 retrained and rewritten, the cut gone."""
    run = tmp_path / killed_run.name
    shutil.copytree(killed_run, run)
    write_latest(tmp_path, run.name)
    log = run / "receipts.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "checkpoint"
               and json.loads(line)["body"]["step"] == 3) + 1  # fmt: skip  (step 3's checkpoint stays receipted)
    head = json.loads(lines[cut - 1])["digest"]
    log.write_text("".join(lines[:cut]))
    atomic_write_json(run / "run.json", {**read_json(run / "run.json"), "receipts_head": head, "global_step": 3,
                                         "status": "paused"})  # fmt: skip
    if damaged:  # step 6's weights, and the pointer moved back to step 3 as the log was
        weights = bytearray((run / "checkpoints" / "step-000006" / "model.safetensors").read_bytes())
        weights[-5] ^= 0xFF
        (run / "checkpoints" / "step-000006" / "model.safetensors").write_bytes(bytes(weights))
        pointer, manifest = run / "checkpoints" / "pointer.json", run / "checkpoints" / "step-000003" / "manifest.json"
        atomic_write_json(pointer, {**read_json(pointer), "checkpoint": "step-000003", "step": 3,
                                    "manifest_sha256": sha256_file(manifest)})  # fmt: skip
    before = {path.relative_to(run): path.read_bytes() for path in run.rglob("*") if path.is_file()
              and path.name != ".lock"}  # fmt: skip
    capsys.readouterr()
    assert main(["receipts", "verify", str(run)]) == 5
    assert main(["doctor", str(run)]) == 5
    assert main(["ckpt", "verify", str(run)]) == 5
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "12", "--ckpt_path", "last") == 5
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(r"truncated: checkpoint step-000006 record(s receipt|ed) head", line), line
    assert "restore the log" in line, line
    assert {path.relative_to(run): path.read_bytes() for path in run.rglob("*") if path.is_file()
            and path.name != ".lock"} == before  # fmt: skip


def _rehashed_state(checkpoint: Path, state: dict) -> None:
    """Replace ``checkpoint``'s trainer state with ``state``, its manifest made consistent."""
    torch.save(state, checkpoint / STATE)
    manifest = read_json(checkpoint / "manifest.json")
    data = (checkpoint / STATE).read_bytes()
    manifest["files"][STATE] = {**manifest["files"][STATE], "sha256": hashlib.sha256(data).hexdigest(),
                                "bytes": len(data)}  # fmt: skip
    atomic_write_json(checkpoint / "manifest.json", manifest)


NOT_TRAINER_STATES = [
    ("an empty dict", lambda state: {}, "pytorch-lightning_version"),
    ("a window revision's", lambda state: {"global_step": 9, "decoder_config": {}}, "pytorch-lightning_version"),
    ("without its optimizer states", lambda state: {k: v for k, v in state.items() if k != "optimizer_states"},
     "optimizer_states"),
]


@pytest.mark.parametrize(("name", "make", "missing"), NOT_TRAINER_STATES, ids=[n[0] for n in NOT_TRAINER_STATES])
def test_a_trainer_state_lightning_cannot_restore_is_refused_in_one_line(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, make: Callable, missing: str
) -> None:
    """A checkpoint given by path, digest-consistent (its manifest re-hashed), so only its content can tell: it was
    exit 1 (KeyError: 'pytorch-lightning_version')."""
    checkpoint = tmp_path / "elsewhere" / "step-000009"
    shutil.copytree(run_dir / "checkpoints" / "step-000009", checkpoint)
    _rehashed_state(checkpoint, make(torch.load(checkpoint / STATE, weights_only=True)))
    capsys.readouterr()
    root = ("--trainer.default_root_dir", str(tmp_path / "runs"))
    assert fit(*root, "--trainer.max_steps", "12", "--ckpt_path", str(checkpoint)) == 4
    assert f"its trainer state has no {missing!r}" in capsys.readouterr().err


def test_a_full_disk_while_a_resume_writes_the_runs_records_is_exit_6(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """ENOSPC from the data manifest's write at a resume's start (a disk with a few KiB left) was exit 1, and
    run.json recorded the failure as ``internal``."""
    from lit_psion.callbacks import run_dir as run_dir_module

    root = ("--trainer.default_root_dir", str(tmp_path))
    assert fit(*root, "--trainer.max_steps", "3") == 0
    real = run_dir_module.atomic_write_json

    def full(path: Path, record: dict) -> None:
        if Path(path).name == "data_manifest.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, record)

    monkeypatch.setattr(run_dir_module, "atomic_write_json", full)
    capsys.readouterr()
    assert fit(*root, "--trainer.max_steps", "6", "--ckpt_path", "last") == 6
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion:")]
    assert "data_manifest.json' failed: No space left on device; free space" in line
    record = read_json(tmp_path / read_latest(tmp_path) / "run.json")
    assert (record["status"], record["failure_class"]) == ("failed", "storage_full")


@pytest.mark.parametrize("record", ["latest_run.json", "checkpoints/pointer.json"])
def test_a_runs_index_or_pointer_that_is_a_symlink_is_refused(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, record: str
) -> None:
    """SPEC §6: what a pointer or index names stays inside its root; a link to a file elsewhere was followed."""
    root = tmp_path / "root"
    shutil.copytree(run_dir, root / run_dir.name)
    shutil.copy(run_dir.parent / "latest_run.json", root / "latest_run.json")
    link = root / record if record == "latest_run.json" else root / run_dir.name / record
    outside = tmp_path / "outside.json"
    shutil.copy(link, outside)
    link.unlink()
    link.symlink_to(outside)
    capsys.readouterr()
    code = fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "12", "--ckpt_path", "last")
    assert "is a symlink" in capsys.readouterr().err
    if record == "latest_run.json":
        assert code == 4  # which run to continue cannot be told
    else:  # an unusable pointer: the newest checkpoint that verifies, with the warning, and a plain pointer again
        assert code == 0 and not link.is_symlink() and read_json(link)["step"] == 12


BAD_POINTERS = [
    ("not JSON", lambda pointer: pointer.write_text("{"), "is malformed", 4),
    ("naming a checkpoint outside the run", lambda pointer: pointer.write_text(json.dumps(
        {**read_json(pointer), "checkpoint": "../../x/step-000009"})), "not a", 4),
    ("naming a step that is not there", lambda pointer: pointer.write_text(json.dumps(
        {**read_json(pointer), "checkpoint": "step-000050", "step": 50})), "names step-000050", 4),
    ("deleted, though the receipts record durable checkpoints", lambda pointer: pointer.unlink(),
     "is missing, though the receipts record a durable checkpoint", 4),
    ("its step a string", lambda pointer: pointer.write_text(json.dumps(
        {**read_json(pointer), "step": str(read_json(pointer)["step"])})), "is malformed", 4),
    ("its step true", lambda pointer: pointer.write_text(json.dumps({**read_json(pointer), "step": True})),
     "is malformed", 4),
    ("its digest a number", lambda pointer: pointer.write_text(json.dumps({**read_json(pointer),
                                                                           "manifest_sha256": 7})), "is malformed", 4),
    ("a list", lambda pointer: pointer.write_text("[]"), "is malformed (it holds a JSON list, not an object", 4),  # was
    # "(list indices must be integers or slices, not str)"
]


@pytest.mark.parametrize(("name", "harm", "message", "code"), BAD_POINTERS, ids=[b[0] for b in BAD_POINTERS])
def test_ckpt_verify_says_what_is_wrong_with_the_pointer(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, harm: Callable, message: str, code: int
) -> None:
    """It printed "ok" for the checkpoint a resume falls back to and exited 0, saying nothing of the pointer."""
    run = tmp_path / run_dir.name
    shutil.copytree(run_dir, run)
    harm(run / "checkpoints" / "pointer.json")
    capsys.readouterr()
    assert main(["ckpt", "verify", str(run)]) == code
    captured = capsys.readouterr()
    assert ("ok: " in captured.out) == (code == 0) and message in captured.err


def test_a_lost_runs_index_names_the_runs_and_how_to_continue_one(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without latest_run.json the line said "run once without it", which starts a new run beside the old."""
    root = tmp_path / "root"
    shutil.copytree(run_dir, root / run_dir.name)
    capsys.readouterr()
    args = ("--trainer.default_root_dir", str(root), "--trainer.max_steps", "12")
    assert fit(*args, "--ckpt_path", "last") == 4
    assert f"the newest {run_dir.name}); continue one with LIT_PSION_RUN_ID=<run id>" in capsys.readouterr().err
    monkeypatch.setenv("LIT_PSION_RUN_ID", run_dir.name)
    assert fit(*args) == 0  # the advice works: the same run, continued
    assert read_json(root / run_dir.name / "run.json")["global_step"] == 12 and len(list(root.iterdir())) == 2


def _lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]


def _write_lines(run: Path, receipts: list[dict]) -> None:
    (run / "receipts.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in receipts))


def _newest_swapped_and_its_receipt_edited(run: Path) -> None:
    """Other weights in the newest checkpoint, its manifest and pointer made consistent, and its durable receipt
    edited to match them without re-hashing it (the receipt's own digest no longer matches)."""
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    weights = bytearray((newest / "model.safetensors").read_bytes())
    weights[-100] ^= 0xFF
    (newest / "model.safetensors").write_bytes(bytes(weights))
    manifest = read_json(newest / "manifest.json")
    manifest["files"]["model.safetensors"]["sha256"] = hashlib.sha256(weights).hexdigest()
    atomic_write_json(newest / "manifest.json", manifest)
    digest = hashlib.sha256((newest / "manifest.json").read_bytes()).hexdigest()
    atomic_write_json(run / "checkpoints" / "pointer.json", {**read_json(run / "checkpoints" / "pointer.json"),
                                                             "manifest_sha256": digest})  # fmt: skip
    receipts = _lines(run)
    for receipt in receipts:
        if receipt["kind"] == "checkpoint" and receipt["body"]["step"] == manifest["step"]:
            receipt["body"] |= {"manifest_digest": digest, "object_digest": hashlib.sha256(weights).hexdigest()}
    _write_lines(run, receipts)


def _first_step_edited(run: Path) -> None:
    receipts = _lines(run)
    next(r for r in receipts if r["kind"] == "trainer_step")["body"]["loss"] = 0.5
    _write_lines(run, receipts)


def _a_step_after_the_oldest_checkpoint_deleted(run: Path) -> None:
    receipts = _lines(run)
    oldest = next(i for i, r in enumerate(receipts) if r["kind"] == "checkpoint")
    del receipts[next(i for i, r in enumerate(receipts) if i > oldest and r["kind"] == "trainer_step")]
    _write_lines(run, receipts)


def _torn_last_line(run: Path) -> None:
    with open(run / "receipts.jsonl", "a") as log:
        log.write('{"kind": "trainer_st')


BROKEN_CHAINS = [  # (name, harm, exit codes of ckpt verify: the run, its newest checkpoint, its oldest)
    # The oldest, given by path, was vouched for by the receipts before the first bad line (exit 0); a checkpoint
    # given by path is now held to its run's whole chain, as a resume holds it (a prefix can be cut and appended to).
    ("the newest checkpoint replaced and its receipt edited to match", _newest_swapped_and_its_receipt_edited,
     (5, 5, 5)),
    ("a step receipt before every checkpoint receipt edited", _first_step_edited, (5, 5, 5)),
    ("a step receipt after the oldest checkpoint's deleted", _a_step_after_the_oldest_checkpoint_deleted, (5, 5, 5)),
    ("a torn last line (a kill mid-append, which a resume repairs)", _torn_last_line, (0, 0, 0)),
]


@pytest.mark.parametrize(("name", "harm", "codes"), BROKEN_CHAINS, ids=[b[0] for b in BROKEN_CHAINS])
def test_receipts_that_do_not_verify_vouch_only_for_the_checkpoints_before_their_first_problem(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, harm: Callable, codes: tuple
) -> None:
    """A checkpoint is held to its durable receipt and its run's whole chain: a receipt from a line the chain does not
    verify vouches for nothing, so what ckpt verify, generate (and a resume) would load there is refused (exit 5)."""
    run = tmp_path / run_dir.name
    shutil.copytree(run_dir, run)
    harm(run)
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    capsys.readouterr()
    got = tuple(main(["ckpt", "verify", str(path)]) for path in (run, checkpoints[-1], checkpoints[0]))
    assert got == codes
    if codes[0] == 5:
        assert "cannot be held to its run's receipts: receipts.jsonl line" in capsys.readouterr().err
        assert main(["generate", str(run), "--tokens", "2"]) == 5


@pytest.mark.parametrize("name", ["step-000099", "step-15"])  # (a mistyped name was "inside run directory ...")
def test_ckpt_verify_of_a_step_the_run_does_not_keep_is_no_such_checkpoint(run_dir: Path, name: str,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """It said the step directory was not a run directory (exit 2)."""
    capsys.readouterr()
    assert main(["ckpt", "verify", str(run_dir / "checkpoints" / name)]) == 4
    assert f"{name}': no such checkpoint (the run keeps step-" in capsys.readouterr().err


@pytest.mark.parametrize("kept", [0.2, 0.6, "3 lines"])
def test_a_receipt_log_cut_short_is_named_as_the_fault_not_the_checkpoints(killed_run: Path, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture,
                                                                            kept: float | str) -> None:  # fmt: skip
    """Cut to a fraction of its bytes, the log made the resume exit 4 blaming the checkpoint ('the run's fit did not
    write it'), though `receipts verify` said the log was torn. A checkpoint's head is durable before the
    checkpoint is written, so a head the torn log does not reach means the log lost receipts (exit 5)."""
    run = tmp_path / killed_run.name
    shutil.copytree(killed_run, run)
    log = run / "receipts.jsonl"
    data = log.read_bytes()
    lines = data.splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:3]) if kept == "3 lines" else data[: int(len(data) * kept)])
    write_latest(tmp_path, run.name)
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file() and path.name != ".lock"}
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "12", "--ckpt_path", "last") == 5
    err = capsys.readouterr().err
    said = {0.2: "ends in a torn line, before the receipt head checkpoint step-000006 records",
            0.6: "end of log: truncated: the recorded head",  # fell back to step 3, whose head the kept log holds
            "3 lines": "ends before the head run.json records, before the receipt head checkpoint step-000006"}[kept]
    assert said in err.strip().splitlines()[-1], err
    assert "the run's fit did not write it" not in err
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file() and path.name != ".lock"} == before


@pytest.mark.parametrize("linked", ["the run directory", "checkpoints/"])
def test_a_run_or_checkpoints_directory_that_is_a_symlink_out_of_the_root_is_refused(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, linked: str
) -> None:
    """SPEC §6: what a run names stays inside its root. A run directory (or its checkpoints/) linked to a directory
    elsewhere was followed: the verifiers said ok (or "foreign ... rename it back") and a resume wrote its next
    checkpoint outside the root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    shutil.copytree(run_dir, root / run_dir.name)
    write_latest(root, run_dir.name)
    link = root / run_dir.name if linked == "the run directory" else root / run_dir.name / "checkpoints"
    link.rename(outside)
    link.symlink_to(outside)
    before = sorted(str(path.relative_to(outside)) for path in outside.rglob("*"))
    capsys.readouterr()
    for command in (["receipts", "verify"], ["ckpt", "verify"], ["doctor"]) if linked == "checkpoints/" else ():
        assert main([*command, str(root / run_dir.name)]) == 4, command  # (a linked run given to them is followed)
        assert f"{str(link)!r} is a symlink (to {str(outside)!r})" in capsys.readouterr().err
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "12", "--ckpt_path", "last") == 4
    assert f"{str(link)!r} is a symlink" in capsys.readouterr().err
    assert sorted(str(path.relative_to(outside)) for path in outside.rglob("*")) == before, "nothing written there"


def test_a_dashboard_directory_that_is_a_symlink_is_replaced_never_written_through(
    run_dir: Path, tmp_path: Path
) -> None:
    """A resume drew index.html and every PNG into the directory a linked dashboard/ pointed to, outside the run."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    shutil.copytree(run_dir, root / run_dir.name)
    write_latest(root, run_dir.name)
    link = root / run_dir.name / "dashboard"
    write_dashboard(root / run_dir.name).parent.rename(outside)
    link.symlink_to(outside, target_is_directory=True)
    before = {str(path.relative_to(outside)): path.read_bytes() for path in outside.rglob("*")}
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "12", "--ckpt_path", "last",
               "--dashboard.enabled", "true") == 0  # fmt: skip
    assert {str(path.relative_to(outside)): path.read_bytes() for path in outside.rglob("*")} == before
    assert not link.is_symlink() and (link / "index.html").is_file()
