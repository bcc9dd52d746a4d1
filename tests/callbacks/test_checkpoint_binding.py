"""A resume loads only a checkpoint of its own run, model and data, from inside its own root."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import read_json, sha256_file
from lit_psion.core.layout import RunLayout
from lit_psion.core.lock import lock_holder
from lit_psion.core.run import read_latest
from tests.helpers import TINY, callbacks_config, fit

CORPUS = Path("fixtures/tiny_corpus.txt")


def _run(root: Path, *args: str) -> RunLayout:
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "6", *args) == 0
    return RunLayout(root, read_latest(root))


def _resume(root: Path, *args: str) -> int:
    return fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "9", "--ckpt_path", "last", *args)


def test_a_checkpoint_copied_in_from_another_run_is_never_resumed(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    other = _run(tmp_path / "other")
    mine = _run(tmp_path / "mine")
    shutil.rmtree(mine.checkpoint(6))
    shutil.copytree(other.checkpoint(6), mine.checkpoint(6))  # verifies on its own, and the pointer is made to match
    pointer = read_json(mine.pointer)
    pointer["manifest_sha256"] = sha256_file(mine.checkpoint(6) / "manifest.json")
    mine.pointer.write_text(json.dumps(pointer))
    capsys.readouterr()
    assert _resume(mine.root) == 0
    err = capsys.readouterr().err
    assert f"was written by run {other.run_id!r}" in err and "using step-000003" in err
    chain = [json.loads(line) for line in mine.receipts.read_text().splitlines()]
    resumed = next(r["body"] for r in chain if r["kind"] == "trainer_step" and r["body"]["checkpoint"])
    assert resumed["checkpoint"] == "checkpoints/step-000003"


MISMATCHES = [
    ("same shapes, other attention heads", ("--model.init_args.decoder.n_head", "4"), 4,
     "(model.decoder.n_head: 2 in the run's config.yaml, 4 here)"),
    ("other dropout", ("--model.init_args.decoder.dropout", "0.0"), 4,
     "(model.decoder.dropout: 0.1 in the run's config.yaml, 0.0 here)"),
    ("other sample stride", ("--data.sample_stride", "8"), 3, "data manifest"),
]


@pytest.mark.parametrize(("name", "change", "code", "message"), MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_a_resume_with_another_model_or_data_is_refused_before_any_weight_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, change: tuple[str, ...], code: int, message: str
) -> None:
    layout = _run(tmp_path)
    capsys.readouterr()
    assert _resume(tmp_path, *change) == code
    assert message in capsys.readouterr().err
    assert read_json(layout.pointer)["step"] == 6


def test_a_changed_character_vocabulary_is_a_data_refusal_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS.read_text())
    _run(tmp_path / "runs", "--data.files", str(corpus))
    corpus.write_text(CORPUS.read_text() + "\n§ a character the first run never saw\n")
    capsys.readouterr()
    assert _resume(tmp_path / "runs", "--data.files", str(corpus)) == 3
    assert "data" in capsys.readouterr().err


def _latest(run_id: str) -> Callable[[Path], None]:
    return lambda root: (root / "latest_run.json").write_text(json.dumps({"run_id": run_id}))


CONFINEMENT = [
    ("latest_run.json climbs out of the root", _latest("../outside/run")),
    ("latest_run.json names an absolute path", _latest("/tmp")),
    ("latest_run.json names the root itself", _latest(".")),
    ("latest_run.json is not JSON", lambda root: (root / "latest_run.json").write_text("{")),
    ("latest_run.json names no run", lambda root: (root / "latest_run.json").write_text("{}")),
]


@pytest.mark.parametrize(("name", "harm"), CONFINEMENT, ids=[c[0] for c in CONFINEMENT])
def test_latest_run_json_is_confined_to_its_root(tmp_path: Path, capsys: pytest.CaptureFixture, name: str,
                                                 harm: Callable[[Path], None]) -> None:  # fmt: skip
    _run(tmp_path / "outside")
    root = tmp_path / "root"
    root.mkdir()
    harm(root)
    capsys.readouterr()
    assert _resume(root) == 4
    assert "latest_run.json" in capsys.readouterr().err


def test_a_pointer_out_of_the_run_or_a_symlinked_step_falls_back_inside(tmp_path: Path) -> None:
    other = _run(tmp_path / "other")
    mine = _run(tmp_path / "mine")
    shutil.rmtree(mine.checkpoint(6))
    mine.checkpoint(6).symlink_to(other.checkpoint(6))
    pointer = read_json(mine.pointer)
    pointer["checkpoint"] = f"../../../other/{other.run_id}/checkpoints/step-000006"
    mine.pointer.write_text(json.dumps(pointer))
    assert _resume(mine.root) == 0
    chain = [json.loads(line) for line in mine.receipts.read_text().splitlines()]
    assert next(r["body"]["checkpoint"] for r in chain if r["kind"] == "trainer_step" and r["body"]["checkpoint"]) \
        == "checkpoints/step-000003"


@pytest.mark.slow  # a first writer held for 30 s: the default suite's budget
def test_a_second_writer_of_a_run_is_refused_naming_the_holder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    layout = _run(tmp_path)
    slow = callbacks_config(tmp_path / "slow.json", ("SlowCheckpointWrites", {"step": 9, "seconds": 30}))
    command = [sys.executable, "-m", "lit_psion", "fit", "--config", TINY, "--config", slow, "--ckpt_path", "last",
               "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "9",
               "--checkpoint.async_write", "true"]  # fmt: skip
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while lock_holder(layout.run_dir) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        holder = lock_holder(layout.run_dir)
        assert holder is not None and holder.pid == first.pid
        capsys.readouterr()
        assert _resume(tmp_path) == 8
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and "locked" in err
        assert first.poll() is None, "the check ran while the first writer still held the run"
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()[-2000:]
    assert lock_holder(layout.run_dir) is None
    assert read_json(layout.run_file)["attempts"] == 2, "the refused writer wrote nothing"
    assert layout.receipts.read_text().count('"event": "resumed"') == 1
    assert _resume(tmp_path, "--trainer.max_steps", "12") == 0  # the lock went with its process


def _forge(run: RunLayout, step: int, weights_from: int) -> None:
    """Step ``weights_from``'s weights in step ``step``, its manifest and the pointer rewritten to match: the
    checkpoint verifies on its own; only its durable checkpoint receipt remembers what was written."""
    weights = run.checkpoint(weights_from) / "model.safetensors"
    shutil.copyfile(weights, run.checkpoint(step) / "model.safetensors")
    manifest = read_json(run.checkpoint(step) / "manifest.json")
    manifest["files"]["model.safetensors"] = {"sha256": sha256_file(weights), "bytes": weights.stat().st_size}
    (run.checkpoint(step) / "manifest.json").write_text(json.dumps(manifest))
    pointer = read_json(run.pointer)
    if pointer["checkpoint"] == run.checkpoint(step).name:
        pointer["manifest_sha256"] = sha256_file(run.checkpoint(step) / "manifest.json")
        run.pointer.write_text(json.dumps(pointer))


def test_a_resume_falls_back_from_a_checkpoint_replaced_after_its_receipt(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = _run(tmp_path)
    _forge(run, 6, weights_from=3)
    capsys.readouterr()
    assert _resume(tmp_path) == 0
    assert "durable checkpoint receipt" in capsys.readouterr().err
    chain = [json.loads(line) for line in run.receipts.read_text().splitlines()]
    assert next(r["body"]["checkpoint"] for r in chain if r["kind"] == "trainer_step" and r["body"]["checkpoint"]) \
        == "checkpoints/step-000003"
    assert any(r["kind"] == "checkpoint" and r["body"]["durability"] == "rejected"
               and r["body"]["checkpoint"] == "checkpoints/step-000006" for r in chain)  # fmt: skip


def test_a_run_whose_every_checkpoint_was_replaced_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _run(tmp_path)
    _forge(run, 6, weights_from=3)
    _forge(run, 3, weights_from=6)
    before = run.receipts.read_bytes()
    capsys.readouterr()
    assert _resume(tmp_path) == 4
    assert "durable checkpoint receipt" in capsys.readouterr().err
    assert run.receipts.read_bytes() == before


def test_a_replaced_checkpoint_given_by_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _run(tmp_path / "source")
    _forge(run, 6, weights_from=3)
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(tmp_path / "new"), "--trainer.max_steps", "9",
               "--ckpt_path", str(run.checkpoint(6))) == 4  # fmt: skip
    assert "durable checkpoint receipt" in capsys.readouterr().err
    assert not (tmp_path / "new").exists() or read_latest(tmp_path / "new") is None


def test_a_run_started_from_another_runs_checkpoint_names_it_and_its_manifest(tmp_path: Path) -> None:
    source = _run(tmp_path / "source")
    assert fit("--trainer.default_root_dir", str(tmp_path / "new"), "--trainer.max_steps", "9",
               "--ckpt_path", str(source.checkpoint(6))) == 0  # fmt: skip
    new = RunLayout(tmp_path / "new", read_latest(tmp_path / "new"))
    started = next(json.loads(line)["body"] for line in new.receipts.read_text().splitlines()
                   if json.loads(line)["kind"] == "training_run")  # fmt: skip
    digest = sha256_file(source.checkpoint(6) / "manifest.json")
    assert started["checkpoint_lineage"] == [f"run:{source.run_id}/step-000006@sha256:{digest}"]


@pytest.mark.parametrize("where", ["a copy outside its run", "a run that lost its receipts"])
def test_a_checkpoint_its_run_could_not_vouch_for_is_named_by_its_path_not_its_run(tmp_path: Path,
                                                                                   where: str) -> None:  # fmt: skip
    """Lineage read `run:<id>/step-000006@sha256:...` for a copy taken out of its run (its manifest names the run)
    and for a run whose log was gone: the receipts of that run were never consulted, so it is not named."""
    source = _run(tmp_path / "source")
    checkpoint = source.checkpoint(6)
    if where == "a copy outside its run":
        checkpoint = shutil.copytree(checkpoint, tmp_path / "loose" / "step-000006")
    else:
        source.receipts.unlink()
    assert fit("--trainer.default_root_dir", str(tmp_path / "new"), "--trainer.max_steps", "9",
               "--ckpt_path", str(checkpoint)) == 0  # fmt: skip
    new = RunLayout(tmp_path / "new", read_latest(tmp_path / "new"))
    started = next(json.loads(line)["body"] for line in new.receipts.read_text().splitlines()
                   if json.loads(line)["kind"] == "training_run")  # fmt: skip
    digest = sha256_file(checkpoint / "manifest.json")
    assert started["checkpoint_lineage"] == [f"{Path(checkpoint).resolve()}@sha256:{digest}"]


def _plant(run: RunLayout, name: str, source: Path, step: int) -> None:
    """Another run's checkpoint planted in ``run`` as ``name`` (manifest rewritten to claim ``run`` and ``step``), and
    the pointer moved to it: every file verifies on its own."""
    planted = run.checkpoints / name
    shutil.rmtree(planted, ignore_errors=True)
    shutil.copytree(source, planted)
    manifest = read_json(planted / "manifest.json")
    manifest.update(run_id=run.run_id, step=step)
    (planted / "manifest.json").write_text(json.dumps(manifest))
    pointer = read_json(run.pointer)
    pointer.update(checkpoint=name, step=step, manifest_sha256=sha256_file(planted / "manifest.json"))
    run.pointer.write_text(json.dumps(pointer))


def _move_pointer_back(run: RunLayout) -> None:
    pointer = read_json(run.pointer)
    pointer.update(checkpoint="step-000003", step=3, manifest_sha256=sha256_file(run.checkpoint(3) / "manifest.json"))
    run.pointer.write_text(json.dumps(pointer))


PLANTS = [
    ("an alias name for step 6", lambda run, other: _plant(run, "step-0000006", other.checkpoint(6), 6)),
    ("a new step no receipt knows, in a sealed chain", lambda run, other: _plant(run, "step-000007",
                                                                                  other.checkpoint(6), 7)),
    ("the pointer moved back to step 3", lambda run, other: _move_pointer_back(run)),
    ("the pointer deleted", lambda run, other: run.pointer.unlink()),
]


@pytest.mark.parametrize(("name", "harm"), PLANTS, ids=[p[0] for p in PLANTS])
def test_a_resume_takes_the_newest_receipted_checkpoint_not_a_planted_or_older_one(
    tmp_path: Path, name: str, harm: Callable[[RunLayout, RunLayout], None]
) -> None:
    other = _run(tmp_path / "other", "--seed_everything", "11")
    run = _run(tmp_path / "mine")
    harm(run, other)
    if name.startswith("a new step"):  # it claims the run with a head the log never held: refused, kept as it is
        files = {path: path.read_bytes() for path in run.run_dir.rglob("*") if path.is_file() and path.name != ".lock"}
        assert _resume(run.root) == 5
        assert {path: path.read_bytes() for path in files} == files
        shutil.move(run.checkpoints / "step-000007", tmp_path / "aside")  # as the refusal says
    assert _resume(run.root) == 0
    chain = [json.loads(line) for line in run.receipts.read_text().splitlines()]
    resumed = next(r["body"] for r in chain if r["kind"] == "trainer_step" and r["body"]["checkpoint"])
    assert (resumed["checkpoint"], resumed["step_in"]) == ("checkpoints/step-000006", 6)
    assert main(["doctor", str(run.run_dir)]) == 0 or name.startswith("a new step")  # the plant itself FAILs doctor


@pytest.mark.parametrize("record", ["run.json", "receipts.jsonl"])
def test_a_run_that_lost_its_records_is_not_continued_afresh(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              record: str) -> None:  # fmt: skip
    """Without run.json or the receipt log its checkpoints name, a resume would start both anew (attempts 1, a chain
    from genesis the checkpoints do not match): refused with exit 5, nothing touched; a new run from the checkpoint
    by path still starts."""
    run = _run(tmp_path / "runs")
    (run.run_dir / record).unlink()
    before = {path: path.read_bytes() for path in run.run_dir.rglob("*") if path.is_file() and path.name != ".lock"}
    capsys.readouterr()
    assert _resume(run.root) == 5
    err = capsys.readouterr().err
    assert f"{record}" in err and "restore" in err and "--ckpt_path <checkpoint directory>" in err
    after = {path: path.read_bytes() for path in run.run_dir.rglob("*") if path.is_file() and path.name != ".lock"}
    assert after == before
    assert fit("--trainer.default_root_dir", str(tmp_path / "new"), "--trainer.max_steps", "9", "--ckpt_path",
               str(run.checkpoint(6))) == 0  # fmt: skip


def _edit_json(path: Path) -> None:
    payload = json.loads(path.read_text())
    payload["sample_counts"]["train"] += 1  # a hand edit: the digest field left as it was
    path.write_text(json.dumps(payload))


EDITS = [  # (record, the edit) -- every file a resume rewrites, each checked against what run.json records
    ("config.yaml", lambda path: path.write_text(path.read_text().replace("32", "64"))),
    ("data_manifest.json", _edit_json),
    ("data_manifest.json", lambda path: path.write_text(path.read_text().replace('"sha256": "', '"sha256": "0', 1))),
    ("data_manifest.json", lambda path: path.write_text("[]")),
    ("tokenizer.json", lambda path: path.write_text(path.read_text() + " ")),
    ("tokenizer.json", lambda path: path.unlink()),
    ("config.yaml", lambda path: path.unlink()),
]


@pytest.mark.parametrize(("record", "edit"), EDITS,
                         ids=["config", "manifest field", "manifest source digest", "manifest not an object",
                              "tokenizer", "tokenizer deleted", "config deleted"])  # fmt: skip
def test_a_resume_does_not_overwrite_a_record_changed_since_the_run_wrote_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, record: str, edit: Callable[[Path], None]
) -> None:
    """A resume rewrites config.yaml, the data manifest and the tokenizer: one that no longer matches what run.json
    records (what doctor reports), config.yaml unless an attempt trained with it, is refused with the same verdict
    (exit 3), so the change is not erased without a word."""
    run = _run(tmp_path / "runs")
    if not (run.run_dir / record).is_file():
        pytest.skip(f"this data writes no {record}")
    edit(run.run_dir / record)
    before = {p: p.read_bytes() for p in run.run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert _resume(run.root) == 3
    err = capsys.readouterr().err
    assert f"{record}:" in err and "would overwrite it" in err and "doctor" in err
    assert {p: p.read_bytes() for p in run.run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before
    assert main(["doctor", str(run.run_dir)]) == 3  # the same verdict as the refusal


def test_each_attempts_receipt_names_its_config_and_a_stop_before_config_yaml_is_written_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.yaml is written once run.json records its digest: an attempt stopped in between (here by Ctrl-C) leaves
    the previous attempt's config.yaml, which the chain's training_run receipts name, so the next resume goes on (a
    config no receipt names is refused, above)."""
    import lit_psion.callbacks.run_dir as run_dir

    run = _run(tmp_path / "runs")
    first = run.config.read_bytes()
    assert _resume(run.root) == 0  # max_steps 9: another config, trained with
    chain = [json.loads(line) for line in run.receipts.read_text().splitlines()]
    digests = [r["body"]["config_digest"] for r in chain if r["kind"] == "training_run"]
    second = sha256_file(run.config)
    assert digests == [hashlib.sha256(first).hexdigest()] * 2 + [second] * 2  # started, completed, resumed, completed
    assert read_json(run.run_file)["config_digest"] == second != digests[0]

    def interrupted(path: Path, text: str) -> None:
        if path.name == "config.yaml":
            raise KeyboardInterrupt
        atomic_write_text(path, text)

    atomic_write_text = run_dir.atomic_write_text
    monkeypatch.setattr(run_dir, "atomic_write_text", interrupted)
    assert fit("--trainer.default_root_dir", str(run.root), "--trainer.max_steps", "12", "--ckpt_path", "last") == 130
    monkeypatch.undo()
    assert sha256_file(run.config) == second != read_json(run.run_file)["config_digest"]  # the third's, untrained
    assert fit("--trainer.default_root_dir", str(run.root), "--trainer.max_steps", "12", "--ckpt_path", "last") == 0
    assert main(["doctor", str(run.run_dir)]) == 0


@pytest.mark.parametrize("thinned", [False, True], ids=["step receipts", "step receipts thinned out"])
def test_an_earlier_attempts_config_put_back_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        thinned: bool) -> None:  # fmt: skip
    """The run trained 6 steps under one config.yaml and 3 more under another; the first put back, with run.json's
    digest to match, names a config the run did train with, but not the one its checkpoint trained under: a resume
    would have compared its settings with the first and recorded the wrong earlier values. Refused (exit 3), nothing
    written, and doctor says why; also when the second attempt wrote no step receipt (its checkpoint's says it
    trained)."""
    run = _run(tmp_path / "runs")
    first = run.config.read_bytes()
    assert _resume(run.root, *(["--receipts.every_n_steps", "1000"] if thinned else [])) == 0
    run.config.write_bytes(first)
    record = read_json(run.run_file)
    run.run_file.write_text(json.dumps({**record, "config_digest": hashlib.sha256(first).hexdigest()}))
    before = {p: p.read_bytes() for p in run.run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert main(["doctor", str(run.run_dir)]) == 3
    assert "an earlier attempt's" in capsys.readouterr().out
    assert fit("--trainer.default_root_dir", str(run.root), "--trainer.max_steps", "12", "--ckpt_path", "last") == 3
    assert "an earlier attempt's" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_a_checkpoint_whose_trainer_state_is_another_step_is_refused(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    source = _run(tmp_path / "source")
    forged = tmp_path / "forged" / "step-000009"
    shutil.copytree(source.checkpoint(6), forged)
    manifest = read_json(forged / "manifest.json")
    manifest["step"] = 9
    (forged / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(tmp_path / "new"), "--trainer.max_steps", "12",
               "--ckpt_path", str(forged)) == 4  # fmt: skip
    assert "trainer state is at step 6" in capsys.readouterr().err


def test_a_replaced_checkpoint_is_refused_through_a_symlinked_path_and_by_ckpt_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = _run(tmp_path / "source")
    _forge(run, 6, weights_from=3)
    (tmp_path / "alias").symlink_to(run.checkpoints)
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(tmp_path / "new"), "--trainer.max_steps", "9",
               "--ckpt_path", str(tmp_path / "alias" / "step-000006")) == 4  # fmt: skip
    assert "durable checkpoint receipt" in capsys.readouterr().err
    assert main(["ckpt", "verify", str(run.run_dir)]) == 4  # what a resume loads verifies, but a durable one does not
    out = capsys.readouterr()
    assert "ok:" not in out.out and "(a resume would use step-000003)" in out.err  # no "ok" before a failure
    assert "step-000006, a durable checkpoint the receipts record, does not verify" in out.err


def test_run_commands_accept_a_run_directory_given_as_dot_or_through_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run(tmp_path / "runs")
    (tmp_path / "myrun").symlink_to(run.run_dir)
    for path in (str(tmp_path / "myrun"), "."):
        monkeypatch.chdir(run.run_dir if path == "." else tmp_path)
        for command in (["receipts", "verify", path], ["doctor", path], ["ckpt", "verify", path]):
            assert main(command) == 0, command


def test_a_resume_with_another_optimizer_is_refused_naming_both(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _run(tmp_path)
    capsys.readouterr()
    assert _resume(tmp_path, "--model.init_args.optimizer.name", "muon") == 4
    err = capsys.readouterr().err
    assert "optimizer 'adamw'" in err and "'muon'" in err and err.count("\n") == 1
    assert main(["receipts", "verify", str(run.run_dir)]) == 0
    assert _resume(tmp_path) == 0


@pytest.mark.parametrize("garbage", [b"0,zz,abc\n", b"step,loss\n1,0.5\nzz,0.4\n", b"\xff\xfe\x00", b"loss\n0.5\n",
                                     None, b"", b"\n\n"],
                         ids=["no header", "a bad step", "binary", "no step column", "a directory", "empty",
                              "blank"])  # fmt: skip
def test_a_resume_refuses_a_metrics_file_it_cannot_continue_and_doctor_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture, garbage: bytes | None
) -> None:
    """It crashed (exit 1) after rewriting run.json to failed with a config.yaml it never wrote; doctor said every
    artifact verified."""
    run = _run(tmp_path / "runs")
    run.metrics.unlink()
    run.metrics.write_bytes(garbage) if garbage is not None else run.metrics.mkdir()
    before = {p: p.read_bytes() for p in run.run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert main(["doctor", str(run.run_dir)]) == 5
    assert any(line.startswith("FAIL metrics.csv: a resume cannot continue it") for line in capsys.readouterr().out
               .splitlines())  # fmt: skip
    assert _resume(run.root) == 5
    err = capsys.readouterr().err
    assert "metrics.csv cannot be continued" in err and "move it aside" in err
    assert {p: p.read_bytes() for p in run.run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before
    run.metrics.unlink() if garbage is not None else run.metrics.rmdir()
    assert _resume(run.root) == 0  # what the line says to do
    assert main(["doctor", str(run.run_dir)]) == 0


def test_a_metrics_row_a_kill_cut_short_does_not_block_the_resume(tmp_path: Path) -> None:
    run = _run(tmp_path / "runs")
    with open(run.metrics, "a") as handle:
        handle.write("0.5,")  # the start of a row, no newline: the kill came mid-append
    assert _resume(run.root) == 0
    assert run.metrics.read_text().endswith("\n") and "0.5,\n" not in run.metrics.read_text()


@pytest.mark.parametrize(("keep", "warned"), [(None, False), (2, True), (1, True)],
                         ids=["whole", "cut to its first row", "header only"])  # fmt: skip
def test_a_resume_says_when_metrics_csv_lacks_rows_before_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture, keep: int | None, warned: bool
) -> None:
    """A metrics.csv cut short (or never flushed before a kill) left a silent gap in the run's curves, and compare
    called an early step's loss the final one. The resume still trains, and says so in one line."""
    run = _run(tmp_path / "runs")
    if keep is not None:
        lines = run.metrics.read_text().splitlines(keepends=True)
        run.metrics.write_text("".join(lines[:keep]))
    capsys.readouterr()
    assert _resume(run.root) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "the rows between are not in it" in line]
    assert len(said) == (1 if warned else 0), said

