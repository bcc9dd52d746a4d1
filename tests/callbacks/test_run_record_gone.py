"""A checkpoint inside a run whose run.json is gone is vouched for by nothing, and is never said to be.

Deleting run.json (or putting something else in its place) once let a checkpoint whose weights were swapped, and
whose manifest was re-hashed to match, pass `ckpt verify` given by its path ("ok"), and start an evaluation or a new
run in silence: the run's receipts, which recorded other weights, were consulted only while run.json was a file.
Now the verifier refuses it (exit 5), as it refuses one whose receipt log is gone, and a new run or an evaluation
from it says that it is held to its manifest alone (as for a lost receipt log) and names it by its path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import read_json, sha256_file
from lit_psion.core.layout import RunLayout
from lit_psion.core.run import read_latest
from tests.helpers import fit


def _run(root: Path) -> RunLayout:
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "6") == 0
    return RunLayout(root, read_latest(root))


def _swap_weights(run: RunLayout) -> Path:
    """Step 3's weights in step 6, its manifest re-hashed: the checkpoint verifies on its own."""
    checkpoint = run.checkpoint(6)
    shutil.copyfile(run.checkpoint(3) / "model.safetensors", checkpoint / "model.safetensors")
    manifest = read_json(checkpoint / "manifest.json")
    weights = checkpoint / "model.safetensors"
    manifest["files"]["model.safetensors"] = {"sha256": sha256_file(weights), "bytes": weights.stat().st_size}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    return checkpoint


def _lose_record(run: RunLayout, how: str) -> None:
    run.run_file.unlink()
    if how == "replaced by a directory":
        run.run_file.mkdir()
    elif how == "a dangling link":
        run.run_file.symlink_to(run.run_dir / "elsewhere.json")
    elif how == "with the receipts":
        run.receipts.unlink()


HOW = ["deleted", "replaced by a directory", "a dangling link", "with the receipts"]
@pytest.mark.parametrize("how", HOW)
def test_the_verifier_refuses_a_checkpoint_in_a_run_that_lost_its_run_json(
    tmp_path: Path, capsys: pytest.CaptureFixture, how: str
) -> None:
    run = _run(tmp_path / "runs")
    checkpoint = _swap_weights(run)
    _lose_record(run, how)
    kept = {path: path.read_bytes() for path in run.run_dir.rglob("*") if path.is_file()}
    for given in (checkpoint, run.checkpoint(3)):  # swapped or not: nothing can tell them apart now
        capsys.readouterr()
        assert main(["ckpt", "verify", str(given)]) == 5
        err = capsys.readouterr().err
        assert f"is in run {run.run_id!r}, whose run.json" in err and "restore it from a backup" in err
    assert {path: path.read_bytes() for path in run.run_dir.rglob("*") if path.is_file()} == kept


@pytest.mark.parametrize("how", HOW[:2])
@pytest.mark.parametrize("use", ["validate", "fit"])
def test_an_evaluation_or_a_new_run_from_it_says_it_is_not_vouched_for(
    tmp_path: Path, capsys: pytest.CaptureFixture, how: str, use: str
) -> None:
    run = _run(tmp_path / "runs")
    checkpoint = _swap_weights(run)
    _lose_record(run, how)
    capsys.readouterr()
    if use == "validate":
        assert main(["validate", "--config", "fixtures/tiny.yaml", "--data.files", "fixtures/tiny_corpus.txt",
                     "--ckpt_path", str(checkpoint)]) == 0  # fmt: skip
    else:
        assert fit("--trainer.default_root_dir", str(tmp_path / "new"), "--trainer.max_steps", "8",
                   "--ckpt_path", str(checkpoint)) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert f"is in run {run.run_id!r}, whose run.json" in err and "held to its manifest alone" in err
    if use == "fit":
        new = RunLayout(tmp_path / "new", read_latest(tmp_path / "new"))
        started = next(json.loads(line)["body"] for line in new.receipts.read_text().splitlines()
                       if json.loads(line)["kind"] == "training_run")  # fmt: skip
        assert started["checkpoint_lineage"] == [f"{checkpoint.resolve()}@sha256:"
                                                 f"{sha256_file(checkpoint / 'manifest.json')}"]  # fmt: skip


@pytest.mark.parametrize("where", ["loose", "checkpoints"])
def test_a_copy_taken_out_of_its_run_is_a_checkpoint_on_its_own(tmp_path: Path, where: str) -> None:
    """A copy outside the run (even in a folder called checkpoints/) is verified against its manifest alone."""
    run = _run(tmp_path / "runs")
    run.run_file.unlink()
    copy = shutil.copytree(run.checkpoint(6), tmp_path / "mine" / where / "step-000006")
    assert main(["ckpt", "verify", str(copy)]) == 0
    assert fit("--trainer.default_root_dir", str(tmp_path / "new"), "--trainer.max_steps", "8",
               "--ckpt_path", str(copy)) == 0  # fmt: skip
