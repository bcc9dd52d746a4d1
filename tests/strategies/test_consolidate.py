"""``ckpt consolidate``: one verified safetensors model from a sharded checkpoint, and the evidence that goes with it.

The sharded run is test_sharded.py's uninterrupted world-2 FSDP2 run (built once per module).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load as safetensors_load

from lit_psion.cli import main
from lit_psion.core import read_json, sha256_file
from lit_psion.core.checkpoint import MANIFEST_FILE, verify_checkpoint
from lit_psion.core.errors import CheckpointError
from lit_psion.runs import load_run
from tests.helpers import TINY, assert_tree_equal
from tests.strategies import test_sharded
from tests.strategies.test_sharded import _flip, sharded_state

uninterrupted = test_sharded.uninterrupted  # the uninterrupted world-2 run, built once for this module too


def test_consolidate_gathers_one_verified_safetensors_model_with_a_receipt(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / uninterrupted.name
    shutil.copytree(uninterrupted, run)
    with pytest.raises(CheckpointError, match="ckpt consolidate"):
        load_run(run)  # a sharded run is read as one model only through its consolidated copy
    assert main(["ckpt", "consolidate", str(run)]) == 0
    copy = run / "consolidated" / "step-000012"
    verified = verify_checkpoint(copy)
    source = verify_checkpoint(run / "checkpoints" / "step-000012")
    assert set(verified.manifest.files) == {"model.safetensors", "trainer_state.pt"}
    assert verified.manifest.consolidated_from == source.manifest_sha256
    assert verified.manifest.model_signature == source.manifest.model_signature
    shards, _ = sharded_state(run / "checkpoints" / "step-000012")
    assert_tree_equal(safetensors_load((copy / "model.safetensors").read_bytes()), shards["state_dict"], "weights")
    receipt = json.loads((run / "consolidated" / "receipts.jsonl").read_text().splitlines()[-1])
    assert receipt["kind"] == "checkpoint_consolidate"
    assert receipt["body"]["source_manifest_digest"] == source.manifest_sha256
    assert receipt["body"]["weights_digest"] == verified.weights_sha256
    loaded = load_run(run)
    assert loaded.checkpoint.path == copy
    model, _ = loaded.build()
    assert_tree_equal({k: v for k, v in model.state_dict().items() if k in shards["state_dict"]},
                      shards["state_dict"], "built model")  # fmt: skip
    raw, manifest = (copy / MANIFEST_FILE).read_bytes(), read_json(copy / MANIFEST_FILE)
    (copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "consolidated_from": "0" * 64}))
    with pytest.raises(CheckpointError, match="gathers another checkpoint"):  # a copy of another checkpoint
        load_run(run)
    weights = (copy / "model.safetensors").read_bytes()
    _flip("model.safetensors")(copy)  # other weights under a consistently rewritten manifest
    forged = {**manifest["files"]["model.safetensors"], "sha256": sha256_file(copy / "model.safetensors")}
    files = {**manifest["files"], "model.safetensors": forged}
    (copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "files": files}))
    with pytest.raises(CheckpointError, match="is not the copy its consolidation receipt recorded"):
        load_run(run)
    (copy / MANIFEST_FILE).write_bytes(raw)
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_run(run)
    (copy / "model.safetensors").write_bytes(weights)
    assert load_run(run).checkpoint.path == copy
    assert main(["fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path / "new"),
                 "--ckpt_path", str(copy)]) == 4  # a model without optimizer state is not resumed  # fmt: skip
    capsys.readouterr()
    assert main(["ckpt", "consolidate", str(run), "--out", str(tmp_path / "elsewhere")]) == 0
    assert verify_checkpoint(tmp_path / "elsewhere" / "step-000012").weights_sha256 == verified.weights_sha256


def test_the_consolidated_models_receipts_are_verified_with_the_run(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / uninterrupted.name
    shutil.copytree(uninterrupted, run)
    assert main(["ckpt", "consolidate", str(run)]) == 0
    capsys.readouterr()
    for target in (run, run / "consolidated"):
        assert main(["receipts", "verify", str(target)]) == 0
        assert "ok: consolidated/receipts.jsonl: 1 receipts verified" in capsys.readouterr().out
    assert main(["doctor", str(run)]) == 0
    out = capsys.readouterr().out
    assert "ok   consolidated/receipts.jsonl" in out and "ok   consolidated/step-000012" in out
    copy, log = run / "consolidated" / "step-000012", run / "consolidated" / "receipts.jsonl"
    manifest = read_json(copy / MANIFEST_FILE)
    (copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "writer": "forged"}))  # not the receipted manifest
    assert main(["doctor", str(run)]) == 4
    assert "FAIL consolidated/step-000012: its manifest is not one a verifying consolidation receipt" in (
        capsys.readouterr().out)  # fmt: skip
    edited = log.read_text().replace('"step": 12', '"step": 13')  # an edited receipt
    assert edited != log.read_text()
    log.write_text(edited)
    for target in (run, run / "consolidated"):
        assert main(["receipts", "verify", str(target)]) == 5
    assert main(["doctor", str(run)]) == 5


def test_the_log_consolidate_out_leaves_elsewhere_is_verified_there(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture
) -> None:
    """`receipts verify DIR` on it asked for a run.json the directory never has (exit 5, "restore it")."""
    out = tmp_path / "elsewhere"
    assert main(["ckpt", "consolidate", str(uninterrupted), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["receipts", "verify", str(out)]) == 0
    assert "1 receipts verified, head" in capsys.readouterr().out
    assert main(["doctor", str(out)]) == 2  # it was "a run stopped as it started: delete it"
    assert "is a `ckpt consolidate --out` directory; `python -m lit_psion ckpt verify" in capsys.readouterr().err
    log = out / "receipts.jsonl"
    log.write_text(log.read_text().replace('"step": 12', '"step": 13'))
    assert main(["receipts", "verify", str(out)]) == 5
    assert "line 1: edited" in capsys.readouterr().err


@pytest.mark.parametrize("log", ["garbled", "another run's"])
def test_an_out_whose_receipts_refuse_the_copy_is_left_as_it_was(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture, log: str
) -> None:
    """The log is checked before the copy is written: a consolidation of another run into the same --out used to
    overwrite that run's copy and only then fail."""
    from lit_psion.core.receipt_log import ReceiptLog
    from lit_psion.core.receipts import ConsolidationReceipt

    out = tmp_path / "out"
    out.mkdir()
    if log == "garbled":
        (out / "receipts.jsonl").write_text("not json\n")
    else:
        other = ReceiptLog(out / "receipts.jsonl", run_id="consolidate-another-run")
        other.append(ConsolidationReceipt(source="run:another-run/step-000012", source_manifest_digest="0" * 64,
                                          step=12, checkpoint="step-000012", manifest_digest="1" * 64,
                                          weights_digest="2" * 64))  # fmt: skip
        other.close()
    before = (out / "receipts.jsonl").read_bytes()
    assert main(["ckpt", "consolidate", str(uninterrupted), "--out", str(out)]) == 5
    assert "receipts.jsonl" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["receipts.jsonl"]
    assert (out / "receipts.jsonl").read_bytes() == before


def _user_directory(step: Path) -> None:
    step.mkdir(parents=True)
    (step / "notes.txt").write_text("my own")


def _user_file(step: Path) -> None:
    step.parent.mkdir(parents=True)
    step.write_text("my own")


OCCUPIED = {  # what is already at --out/step-000012, which consolidate deleted (a directory) or crashed on (exit 1)
    "a user's directory": (_user_directory, "is not step-000012's consolidated copy"),
    "a user's file": (_user_file, "is a file, not a consolidated checkpoint"),
}


@pytest.mark.parametrize("case", OCCUPIED)
def test_consolidate_never_writes_over_what_is_at_its_output(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    make, says = OCCUPIED[case]
    out = tmp_path / "out"
    make(out / "step-000012")
    before = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert main(["ckpt", "consolidate", str(uninterrupted), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert says in err and "move it, or give another --out" in err, err
    assert {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in out.iterdir()) == ["step-000012"]  # no staging directory left behind


def test_consolidating_again_keeps_the_receipted_copy_and_writes_nothing(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture
) -> None:
    """A second consolidation deleted the copy, wrote it again (a crash between the two left none) and added a
    second receipt."""
    out = tmp_path / "out"
    assert main(["ckpt", "consolidate", str(uninterrupted), "--out", str(out)]) == 0
    before = {path.relative_to(out): (path.read_bytes(), path.stat().st_mtime_ns) for path in out.rglob("*")
              if path.is_file()}  # fmt: skip
    capsys.readouterr()
    assert main(["ckpt", "consolidate", str(uninterrupted), "--out", str(out)]) == 0
    assert "already consolidated" in capsys.readouterr().out
    assert {path.relative_to(out): (path.read_bytes(), path.stat().st_mtime_ns) for path in out.rglob("*")
            if path.is_file()} == before  # fmt: skip


def test_a_link_in_place_of_the_runs_consolidated_directory_is_not_followed_into_the_run(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture
) -> None:
    """`consolidated -> checkpoints` let consolidate replace the run's durable sharded checkpoint with its copy."""
    run = tmp_path / uninterrupted.name
    shutil.copytree(uninterrupted, run, symlinks=True)
    shutil.rmtree(run / "consolidated", ignore_errors=True)
    (run / "consolidated").symlink_to("checkpoints")
    before = {path.relative_to(run): path.read_bytes() for path in (run / "checkpoints").rglob("*") if path.is_file()}
    assert main(["ckpt", "consolidate", str(run)]) == 2
    assert "inside run directory" in capsys.readouterr().err
    after = {path.relative_to(run): path.read_bytes() for path in (run / "checkpoints").rglob("*") if path.is_file()}
    assert after == before
    assert main(["ckpt", "verify", str(run)]) == 0


def test_a_copy_consolidated_from_a_checkpoint_the_run_does_not_record_is_refused(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture
) -> None:
    """A consolidated copy is trusted for its source: a copy gathered (by the Python API, past the CLI's checks)
    from other weights under a consistently rewritten manifest of the run's step was loaded by ``--ckpt_path``,
    with its own manifest and consolidation receipt both whole."""
    from lit_psion.cli import _as_its_run_receipted
    from lit_psion.consolidation import consolidate

    run = tmp_path / uninterrupted.name
    shutil.copytree(uninterrupted, run)
    forged = tmp_path / "elsewhere" / "checkpoints" / "step-000012"
    shutil.copytree(run / "checkpoints" / "step-000012", forged)
    _flip("__0_0.distcp")(forged)
    manifest = read_json(forged / MANIFEST_FILE)
    manifest["files"]["__0_0.distcp"]["sha256"] = sha256_file(forged / "__0_0.distcp")
    (forged / MANIFEST_FILE).write_text(json.dumps(manifest))
    consolidate(verify_checkpoint(forged), run / "consolidated")
    copy = run / "consolidated" / "step-000012"
    assert verify_checkpoint(copy).manifest.consolidated_from == verify_checkpoint(forged).manifest_sha256
    capsys.readouterr()
    assert main(["validate", "--config", TINY, "--ckpt_path", str(copy)]) == 4
    err = capsys.readouterr().err
    assert "was consolidated from a checkpoint the run's receipts do not record" in err, err
    shutil.rmtree(run / "consolidated")
    assert main(["ckpt", "consolidate", str(run)]) == 0  # the honest copy, of the receipted checkpoint, is trusted
    assert _as_its_run_receipted(verify_checkpoint(copy)).path == copy
    capsys.readouterr()
    assert main(["doctor", str(run / "consolidated")]) == 2  # it was "a run stopped as it started: delete it"
    err = capsys.readouterr().err  # it said "is run 'R''s consolidated copies; give the run: R, not a fit's run ..."
    assert f"is the consolidated copies of run {run.name!r}; `python -m lit_psion receipts verify {run}` (or " \
           f"doctor) checks them with the run, `python -m lit_psion ckpt verify {run / 'consolidated'}/step-NNNNNN` " \
           "one copy, not a fit's run directory" in err, err  # fmt: skip


def _forged_copy(run: Path, harm: str) -> Path:
    """Run ``run``'s consolidated copy made to hold other weights (``harm`` "weights") or another trainer state
    ("state"), its manifest re-hashed and a consolidation receipt for it appended to the copies' log, correctly
    chained: every file agrees with every other, and the log is anchored nowhere."""
    import io

    import torch
    from safetensors.torch import save

    from lit_psion.core.receipt_log import ReceiptLog
    from lit_psion.core.receipts import ConsolidationReceipt

    copy = run / "consolidated" / "step-000012"
    if harm == "weights":
        weights = safetensors_load((copy / "model.safetensors").read_bytes())
        name = next(iter(weights))
        (copy / "model.safetensors").write_bytes(save({**weights, name: weights[name] * 0 + 1}))
    else:
        state = torch.load(copy / "trainer_state.pt", weights_only=True)
        buffer = io.BytesIO()
        torch.save({**state, "epoch": state["epoch"] + 7}, buffer)
        (copy / "trainer_state.pt").write_bytes(buffer.getvalue())
    manifest = read_json(copy / MANIFEST_FILE)
    for file in manifest["files"]:
        data = (copy / file).read_bytes()
        manifest["files"][file] = {**manifest["files"][file], "sha256": sha256_file(copy / file), "bytes": len(data)}
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    forged = verify_checkpoint(copy)
    log = ReceiptLog(run / "consolidated" / "receipts.jsonl", run_id=f"consolidate-{run.name}")
    log.append(ConsolidationReceipt(source=f"run:{run.name}/step-000012", step=12, checkpoint="step-000012",
                                    source_manifest_digest=forged.manifest.consolidated_from,
                                    manifest_digest=forged.manifest_sha256, weights_digest=forged.weights_sha256))
    log.close()
    return copy


@pytest.mark.parametrize("harm", ["weights", "state"])
def test_a_forged_copy_with_a_forged_receipt_is_refused_everywhere(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture, harm: str
) -> None:
    """The copies' receipt log is anchored nowhere: a copy holding other weights (or another trainer state) under
    a re-hashed manifest, with a receipt appended for it, passed receipts verify, ckpt verify, doctor ("all
    artifacts verified"), and generate sampled from it for the run directory."""
    run = tmp_path / uninterrupted.name
    shutil.copytree(uninterrupted, run)
    assert main(["ckpt", "consolidate", str(run)]) == 0
    copy = _forged_copy(run, harm)
    differs = "model.safetensors" if harm == "weights" else "trainer_state.pt"
    says = f"is not what step-000012 gathers to (its {differs} differs"
    capsys.readouterr()
    assert main(["receipts", "verify", str(run)]) == 0  # the log itself is whole
    for command in (["ckpt", "verify", str(copy)], ["doctor", str(run)], ["generate", str(run), "--tokens",
                    "4"], ["validate", "--config", TINY, "--ckpt_path", str(copy)]):  # fmt: skip
        capsys.readouterr()
        assert main(command) == 4, command
        said = capsys.readouterr()
        assert says in said.out + said.err, (command, said)
    with pytest.raises(CheckpointError, match="gathers to"):
        load_run(run)
    assert main(["ckpt", "consolidate", str(run)]) == 2  # not taken for the copy made before
    shutil.rmtree(run / "consolidated")
    assert main(["ckpt", "consolidate", str(run)]) == 0
    assert main(["ckpt", "verify", str(copy)]) == 0 and "the gathering of run" in capsys.readouterr().out


def test_a_copy_of_a_checkpoint_that_is_not_sharded_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A "consolidated" copy put into a single-device run (another run's weights, consolidated_from set to the run's
    own checkpoint) was validated and sampled from without a word."""
    from tests.helpers import fit

    root = tmp_path / "runs"
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "6") == 0
    run = next(p for p in root.iterdir() if p.is_dir())
    source = verify_checkpoint(run / "checkpoints" / "step-000006")
    copy = run / "consolidated" / "step-000006"
    shutil.copytree(source.path, copy)
    manifest = read_json(copy / MANIFEST_FILE)
    (copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "consolidated_from": source.manifest_sha256}))
    capsys.readouterr()
    assert main(["validate", "--config", TINY, "--ckpt_path", str(copy)]) == 4
    assert "has no verifying consolidation receipts" in capsys.readouterr().err
    from lit_psion.core.receipt_log import ReceiptLog
    from lit_psion.core.receipts import ConsolidationReceipt

    forged = verify_checkpoint(copy)  # and a receipt for it, correctly chained: the copy still gathers nothing
    log = ReceiptLog(run / "consolidated" / "receipts.jsonl", run_id=f"consolidate-{run.name}")
    log.append(ConsolidationReceipt(source=f"run:{run.name}/step-000006", step=6, checkpoint="step-000006",
                                    source_manifest_digest=source.manifest_sha256,
                                    manifest_digest=forged.manifest_sha256, weights_digest=forged.weights_sha256))
    log.close()
    for command in (["validate", "--config", TINY, "--ckpt_path", str(copy)], ["ckpt", "verify", str(copy)],
                    ["generate", str(copy), "--tokens", "4", "--tokenizer", str(run / "tokenizer.json")]):  # fmt: skip
        assert main(command) == 4, command
        assert "which is not sharded: `ckpt consolidate` made no copy of it" in capsys.readouterr().err, command


FOREIGN_OUTS = {  # --out given -> the one line: each wrote receipts.jsonl and step-000012/ in among what was there
    "a user's directory": (lambda out: (out.mkdir(), (out / "notes.txt").write_text("mine")),
                           "already holds files ckpt consolidate did not write (such as 'notes.txt')"),
    "a runs root": (lambda out: (out.mkdir(), (out / "20261207-000000-abcdef").mkdir()),
                    "already holds files ckpt consolidate did not write (such as '20261207-000000-abcdef')"),
    "a file": (lambda out: out.write_text("mine"), "is a file; give a directory"),
}


@pytest.mark.parametrize("case", FOREIGN_OUTS)
def test_an_out_holding_others_files_is_refused_and_left_as_it_was(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    make, says = FOREIGN_OUTS[case]
    out = tmp_path / "out"
    make(out)
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    assert main(["ckpt", "consolidate", str(uninterrupted), "--out", str(out)]) == 2
    assert says in capsys.readouterr().err
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("args", [("consolidate", "--out", ""), ("verify", "--out", "x")], ids=["empty", "verify"])
def test_an_out_that_means_nothing_here_is_refused(uninterrupted: Path, capsys: pytest.CaptureFixture,
                                                   args: tuple[str, ...]) -> None:  # fmt: skip
    """An empty --out wrote into the working directory; verify took --out and ignored it."""
    assert main(["ckpt", args[0], str(uninterrupted), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert ("an empty value" if args[2] == "" else "ckpt verify writes nothing") in err, err


@pytest.mark.slow  # default-suite budget: a world-2 resume of ~20-30 s, run by CI's slow step
def test_a_run_continued_after_consolidate_keeps_the_checkpoint_its_copy_is_held_to(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture
) -> None:
    """Retention deleted step-000012 three checkpoints later, and doctor then failed the healthy run (exit 4: the copy
    "held to nothing")."""
    root = tmp_path / "root"
    shutil.copytree(uninterrupted.parent, root)
    run = root / uninterrupted.name
    assert main(["ckpt", "consolidate", str(run)]) == 0
    result = test_sharded.run_fit(root, "--trainer.max_steps", "24", "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    kept = sorted(path.name for path in (run / "checkpoints").iterdir() if path.name.startswith("step-"))
    assert kept == ["step-000012", "step-000018", "step-000021", "step-000024"], "the copied step, and the newest 3"
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 0, capsys.readouterr().out
    shutil.rmtree(run / "consolidated")
    result = test_sharded.run_fit(root, "--trainer.max_steps", "27", "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (run / "checkpoints" / "step-000012").exists(), "without its copy, retention takes it as before"
