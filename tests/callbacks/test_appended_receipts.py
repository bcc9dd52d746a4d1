"""Receipts appended to a run's log after the head run.json records vouch for nothing.

Anyone who can write ``receipts.jsonl`` can append a validly chained receipt. A checkpoint receipt appended
for a step that already had one used to win (the latest per step counted): a checkpoint replaced with other
weights, its manifest and the pointer made consistent, passed `ckpt verify` and `doctor`, and a resume trained
from it. Only run.json's head (written again after each checkpoint's durable receipt) anchors a receipt
outside the log, so what follows it cannot override what it covers, nor bind a checkpoint of its own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from lit_psion.cli import main
from lit_psion.core import atomic_write_json, read_json
from lit_psion.core.audit import receipted_checkpoints
from lit_psion.core.chain import Receipt
from lit_psion.core.checkpoint import resolve_checkpoint
from lit_psion.core.layout import RunLayout
from lit_psion.core.run import read_latest
from tests.helpers import callbacks_config, fit, fit_subprocess


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("completed")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "6") == 0
    return root / read_latest(root)


def _append(run: Path, kind: str, body: dict) -> str:
    """One receipt chained onto the end of ``run``'s log (as anyone who can write the file can); its digest."""
    log = run / "receipts.jsonl"
    last = json.loads(log.read_text().splitlines()[-1])
    receipt = Receipt.seal(kind=kind, run_id=last["run_id"], seq=last["seq"] + 1, prev_digest=last["digest"],
                           body=body)  # fmt: skip
    with log.open("a") as out:
        out.write(json.dumps(receipt.to_json_dict(), sort_keys=True) + "\n")
    return receipt.digest


def _receipts(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "receipts.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _replace_weights(checkpoint: Path, step: int | None = None, head: str | None = None) -> tuple[str, str]:
    """Other weights in ``checkpoint``, its manifest (and the run's pointer) made to match; (manifest, weights)
    sha256."""
    weights = load_file(checkpoint / "model.safetensors")
    save_file({name: tensor * 0 for name, tensor in weights.items()}, checkpoint / "model.safetensors")
    manifest = read_json(checkpoint / "manifest.json")
    for name in manifest["files"]:
        data = (checkpoint / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest |= {"step": step if step is not None else manifest["step"]}
    manifest |= {"receipts_head": head} if head is not None else {}
    atomic_write_json(checkpoint / "manifest.json", manifest)
    digest = hashlib.sha256((checkpoint / "manifest.json").read_bytes()).hexdigest()
    atomic_write_json(checkpoint.parent / "pointer.json",
                      {"step": manifest["step"], "checkpoint": checkpoint.name, "manifest_sha256": digest})  # fmt: skip
    return digest, manifest["files"]["model.safetensors"]["sha256"]


def _durable_again(run: Path, step: int, digests: tuple[str, str]) -> None:
    old = next(r for r in _receipts(run, "checkpoint") if r["body"]["step"] == step
               and r["body"]["durability"] == "durable")  # fmt: skip
    _append(run, "checkpoint", {**old["body"], "manifest_digest": digests[0], "object_digest": digests[1]})


def _resumed_from(run: Path, step: int) -> None:
    started = _receipts(run, "training_run")[0]["body"]
    lineage = [f"checkpoints/step-{step:06d}@sha256:{'0' * 64}"]
    _append(run, "training_run", {**started, "event": "resumed", "status": "active", "checkpoint_lineage": lineage})


def _replaced_with_a_receipt(run: Path) -> int:
    _durable_again(run, 6, _replace_weights(run / "checkpoints" / "step-000006"))
    return 6


def _replaced_after_a_resume(run: Path) -> int:
    _resumed_from(run, 3)
    _durable_again(run, 6, _replace_weights(run / "checkpoints" / "step-000006"))
    return 6


def _a_new_step_with_receipts(run: Path) -> int:
    """A step-9 checkpoint the fit never wrote, anchored by a step receipt and a durable receipt appended for it."""
    step8 = next(r for r in _receipts(run, "trainer_step") if r["body"]["step_out"] == 8)
    head = _append(run, "trainer_step", {**step8["body"], "step_in": 8, "step_out": 9})
    forged = run / "checkpoints" / "step-000009"
    shutil.copytree(run / "checkpoints" / "step-000006", forged)
    digests = _replace_weights(forged, step=9, head=head)
    step6 = next(r["body"] for r in _receipts(run, "checkpoint") if r["body"]["step"] == 6
                 and r["body"]["durability"] == "durable")  # fmt: skip
    _append(run, "checkpoint", {**step6, "step": 9, "manifest_digest": digests[0], "object_digest": digests[1]})
    return 9


APPENDED = {  # case: (forge the killed run, the checkpoint a resume must fall back to)
    "a durable receipt appended for a step that had one": (_replaced_with_a_receipt, 3),
    "the same after an appended resume from an earlier step": (_replaced_after_a_resume, 3),
    "a new step with a step receipt and a durable receipt appended": (_a_new_step_with_receipts, 6),
}


@pytest.mark.parametrize("case", APPENDED)
def test_a_checkpoint_vouched_for_only_by_appended_receipts_is_not_trusted(killed_run: Path, tmp_path: Path,
                                                                           case: str) -> None:  # fmt: skip
    forge, falls_back_to = APPENDED[case]
    run = tmp_path / killed_run.name
    shutil.copytree(killed_run, run)
    forged = forge(run)
    layout, rejected = RunLayout.of(run), []
    resolved = resolve_checkpoint(layout, rejected, quiet=True, receipted=receipted_checkpoints(layout))
    assert resolved.step == falls_back_to and f"step-{forged:06d}" in {r.path.name for r in rejected}, rejected
    assert main(["ckpt", "verify", str(run / "checkpoints" / f"step-{forged:06d}")]) == 4
    assert main(["ckpt", "verify", str(run)]) == 4  # it passed, naming the forged checkpoint as what a resume loads
    assert main(["doctor", str(run)]) != 0


def test_a_checkpoint_of_a_sealed_run_given_by_path_is_held_to_the_anchored_receipts(
    completed_run: Path, tmp_path: Path
) -> None:
    """After the seal, `receipts verify` says after_end, but a checkpoint given by its path was held to the latest
    receipt for its step: an appended one let `ckpt verify DIR`, `validate` and `fit --ckpt_path DIR` use it."""
    run = tmp_path / completed_run.name
    shutil.copytree(completed_run, run)
    _replaced_after_a_resume(run)
    checkpoint = str(run / "checkpoints" / "step-000006")
    assert main(["receipts", "verify", str(run)]) == 5
    assert main(["ckpt", "verify", checkpoint]) == 4
    assert fit("--trainer.default_root_dir", str(tmp_path / "new"), "--trainer.max_steps", "8", "--ckpt_path",
               checkpoint) == 5  # fmt: skip  (its chain, sealed and appended to, does not verify)
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").glob("*/checkpoints/step-*"))


@pytest.mark.parametrize("killer", ["KillBeforeRunRecord", "KillBeforeDurableReceipt"])
def test_a_checkpoint_written_again_and_killed_before_run_json_is_the_runs_own(tmp_path: Path, killer: str) -> None:
    """A resume fell back past a damaged step 9, wrote step 9 again and was killed between its durable receipt and
    run.json's next write: that receipt lies past run.json's head, so the first (anchored) one for step 9 counted
    and the honest new checkpoint was refused as replaced. A forgery appended after it still is."""
    root = tmp_path / "runs"
    common = ("--trainer.default_root_dir", str(root), "--trainer.max_steps", "12")
    kill = callbacks_config(tmp_path / "kill.json", ("KillAt", {"step": 11}))
    assert fit_subprocess(*common, "--config", kill).returncode == -9
    run = root / read_latest(root)
    weights = run / "checkpoints" / "step-000009" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))  # a disk fault
    window = callbacks_config(tmp_path / "window.json", (killer, {"step": 9}))  # after its receipt, or before
    assert fit_subprocess(*common, "--config", window, "--ckpt_path", "last").returncode == -9
    layout, rejected = RunLayout.of(run), []
    assert resolve_checkpoint(layout, rejected, quiet=True, receipted=receipted_checkpoints(layout)).step == 9
    assert main(["ckpt", "verify", str(run)]) == 0 and main(["doctor", str(run)]) == 0
    if killer == "KillBeforeRunRecord":  # (killed before its receipt, it is held to its manifest: the documented limit)
        _durable_again(run, 9, _replace_weights(run / "checkpoints" / "step-000009"))
        assert main(["ckpt", "verify", str(run / "checkpoints" / "step-000009")]) == 4  # the first after the head holds


def test_a_paused_run_takes_no_checkpoint_without_its_receipt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run paused where its last step has no checkpoint (SIGTERM at an epoch's end) took a made-up checkpoint of
    that step anchored at run.json's own head: every check passed and the resume trained from it. A run that
    paused wrote every checkpoint's receipt before it said so."""
    config = tmp_path / "tiny.yaml"
    config.write_text(Path("fixtures/tiny.yaml").read_text().replace("lit_psion.models.DecoderLM",
                                                                     "tests.test_resume.SigtermInTheModulesHook"))
    common = ("--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.max_steps", "10", "--data.sample_stride",
              "200", "--model.init_args.optimizer.decay_steps", "10")  # fmt: skip  (5 batches an epoch)
    monkeypatch.setenv("LIT_PSION_TEST_TERM_AT", "5")
    result = fit_subprocess(*common, config=str(config))
    assert result.returncode == 143, result.stderr[-2000:]
    run = tmp_path / "runs" / read_latest(tmp_path / "runs")
    record = read_json(run / "run.json")
    assert (record["status"], record["global_step"]) == ("paused", 5) and not (run / "checkpoints/step-000005").exists()
    forged = shutil.copytree(run / "checkpoints" / "step-000003", run / "checkpoints" / "step-000005")
    _replace_weights(forged, step=5, head=record["receipts_head"])
    layout, rejected = RunLayout.of(run), []
    assert resolve_checkpoint(layout, rejected, quiet=True, receipted=receipted_checkpoints(layout)).step == 3
    assert "the run paused after writing every checkpoint's receipt" in rejected[0].reason
    assert main(["ckpt", "verify", str(forged)]) == 4


def test_a_failed_run_takes_no_checkpoint_without_its_receipt(tmp_path: Path) -> None:
    """A run that failed (a transactional stop, exit 7) at a step with no checkpoint took a made-up one of that step
    anchored at run.json's own head and step: only run.json's head was asked of it."""
    config = {"trainer": {"strategy": {"class_path": "lit_psion.strategies.TransactionalStrategy", "init_args": {
        "policy": {"restore_after": 3, "stop_after": 3}}}, "callbacks": [{"class_path":
        "tests.strategies.regression.PoisonGradients", "init_args": {"steps": [7, 8, 9, 10]}}]}}  # fmt: skip
    (tmp_path / "tx.json").write_text(json.dumps(config))
    root = tmp_path / "runs"
    assert fit("--config", str(tmp_path / "tx.json"), "--trainer.default_root_dir", str(root), "--trainer.max_steps",
               "12") == 7  # fmt: skip
    run = root / read_latest(root)
    record = read_json(run / "run.json")
    assert record["status"] == "failed" and not (run / "checkpoints" / f"step-{record['global_step']:06d}").exists()
    forged = shutil.copytree(run / "checkpoints" / "step-000006",
                             run / "checkpoints" / f"step-{record['global_step']:06d}")  # fmt: skip
    _replace_weights(forged, step=record["global_step"], head=record["receipts_head"])
    layout, rejected = RunLayout.of(run), []
    assert resolve_checkpoint(layout, rejected, quiet=True, receipted=receipted_checkpoints(layout)).step == 6
    assert "did not write it" in rejected[0].reason
    assert main(["ckpt", "verify", str(forged)]) == 4


def test_a_log_cut_below_run_jsons_head_and_appended_to_vouches_for_no_checkpoint_given_by_path(
    killed_run: Path, tmp_path: Path
) -> None:
    """With run.json's head cut from the log, every durable receipt counted again: one appended after the cut bound a
    replaced checkpoint that `ckpt verify DIR` and `--ckpt_path DIR` (validate, a new run) then trusted."""
    run = tmp_path / killed_run.name
    shutil.copytree(killed_run, run)
    log = run / "receipts.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    durable = next(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "checkpoint"
                   and json.loads(line)["body"]["step"] == 6 and json.loads(line)["body"]["durability"] == "durable")
    log.write_text("".join(lines[:durable]))
    body = json.loads(lines[durable])["body"]
    digests = _replace_weights(run / "checkpoints" / "step-000006")
    _append(run, "checkpoint", {**body, "manifest_digest": digests[0], "object_digest": digests[1]})
    step6 = str(run / "checkpoints" / "step-000006")
    assert main(["ckpt", "verify", step6]) == 5
    assert fit("--trainer.default_root_dir", str(tmp_path / "new"), "--trainer.max_steps", "8", "--ckpt_path",
               step6) == 5  # fmt: skip


def test_a_plain_run_that_failed_takes_no_made_up_checkpoint_of_its_last_step(tmp_path: Path) -> None:
    """The rule alone: a fit that failed (an error in step 7) had receipted every step it did, so a made-up
    checkpoint of its last step, anchored at run.json's own head and step, agrees with every step receipt and with
    run.json; only the run having ended (it failed after writing every checkpoint's receipt) refuses it."""
    root = tmp_path / "runs"
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "8", "--checkpoint.every_n_train_steps",
               "4", "--trainer.callbacks+=tests.callbacks.test_reports.FailAtStep") == 14  # fmt: skip
    run = root / read_latest(root)
    record = read_json(run / "run.json")
    assert (record["status"], record["global_step"]) == ("failed", 6)
    assert [r["body"]["step_out"] for r in _receipts(run, "trainer_step")][-1] == 6  # every step done is receipted
    forged = shutil.copytree(run / "checkpoints" / "step-000004", run / "checkpoints" / "step-000006")
    _replace_weights(forged, step=6, head=record["receipts_head"])
    layout, rejected = RunLayout.of(run), []
    assert resolve_checkpoint(layout, rejected, quiet=True, receipted=receipted_checkpoints(layout)).step == 4
    assert "the run failed after writing every checkpoint's receipt" in rejected[0].reason, rejected[0].reason
    assert main(["ckpt", "verify", str(forged)]) == 4
