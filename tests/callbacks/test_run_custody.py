"""A run as files someone else may have touched: a FIFO in a file's place, a checkpoint replaced while its receipt
log is gone, paths given from inside the run, a renamed or half-copied run, a config.yaml swapped under a
rewritten run.json. Each is refused in one line, never hung on, never trusted (found by the threat and relocation
walkthroughs)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import atomic_write_json, read_json
from lit_psion.core.run import read_latest
from tests.helpers import REPO_ROOT, TINY, fit


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed 6-step run (checkpoints at 3 and 6) in a root of its own, copied by each test."""
    root = tmp_path_factory.mktemp("custody")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "6",
               "--checkpoint.every_n_train_steps", "3") == 0  # fmt: skip
    return root


def _copy(made: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    shutil.copytree(made, root)
    return root, root / read_latest(root)


def _replace_weights(run: Path) -> Path:
    """step-000006 given step-000003's weights under a manifest rewritten to match (a consistent replacement)."""
    step = run / "checkpoints" / "step-000006"
    shutil.copy(run / "checkpoints" / "step-000003" / "model.safetensors", step / "model.safetensors")
    manifest = read_json(step / "manifest.json")
    data = (step / "model.safetensors").read_bytes()
    manifest["files"]["model.safetensors"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_json(step / "manifest.json", manifest)
    return step


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: a blocked open() or read() is interrupted by the alarm's exception."""

    def expire(*args: object) -> None:
        raise TimeoutError(f"still running after {seconds} s (blocked on a FIFO?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


FIFO_PLACES = ["latest_run.json", "run.json", "receipts.jsonl", "config.yaml", "data_manifest.json", "metrics.csv",
               "checkpoints/pointer.json", "checkpoints/step-000006/manifest.json",
               "checkpoints/step-000006/model.safetensors"]  # fmt: skip


@pytest.mark.parametrize("place", FIFO_PLACES)
def test_a_fifo_in_a_files_place_is_refused_never_waited_on(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture, place: str
) -> None:
    """A FIFO as a checkpoint's manifest.json hung receipts verify, doctor and a resume for good (a FIFO no one
    writes blocks its reader's open); as pointer.json or config.yaml it hung ckpt verify, compare and validate."""
    root, run = _copy(made, tmp_path)
    target = root / place if place == "latest_run.json" else run / place
    target.unlink()
    os.mkfifo(target)
    resume = ["--trainer.default_root_dir", str(root), "--ckpt_path", "last"]
    for command in (["receipts", "verify", str(run)], ["ckpt", "verify", str(run)], ["doctor", str(run)],
                    ["validate", "--config", TINY, *resume], ["fit", "--config", TINY, "--trainer.max_steps", "8",
                                                              *resume]):  # fmt: skip
        capsys.readouterr()
        with _deadline(60):
            code = main(command)
        err = capsys.readouterr().err
        # The verifiers do not read the root's index; everything else is the run's evidence (5) or a checkpoint's (4).
        expected = 0 if place == "latest_run.json" and command[0] not in ("fit", "validate") else (
            4 if place.startswith("checkpoints/") or place == "latest_run.json" else 5)  # fmt: skip
        assert code == expected, (command, err)
        if code != 0:
            assert [line for line in err.splitlines() if line.startswith("lit_psion: error:")], (command, err)
    assert target.exists() and not target.is_file(), "left as it was found"


def test_a_replaced_checkpoint_is_not_vouched_for_once_the_receipt_log_is_gone(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Without receipts.jsonl, a checkpoint replaced under a rewritten manifest passed `ckpt verify` ("written by
    run R as its receipts record"), validate and doctor ("match the manifest and its receipt")."""
    _, run = _copy(made, tmp_path)
    step = _replace_weights(run)
    assert main(["ckpt", "verify", str(step)]) == 4  # the receipt says otherwise
    (run / "receipts.jsonl").unlink()
    capsys.readouterr()
    assert main(["ckpt", "verify", str(step)]) == 5
    assert "receipts.jsonl is missing" in capsys.readouterr().err
    assert main(["validate", "--config", TINY, "--ckpt_path", str(step)]) == 0  # an evaluation may, but says so:
    assert "receipts.jsonl is missing: step-000006 is held to its manifest alone" in capsys.readouterr().err
    assert main(["ckpt", "verify", str(run)]) == 5
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 5
    assert "ok checkpoints/step-000006" not in capsys.readouterr().out


@pytest.mark.parametrize("given", ["from inside the checkpoint", "from checkpoints/"])
def test_a_checkpoint_path_given_from_inside_its_run_is_still_held_to_the_run(
    made: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    """`ckpt verify .` in a replaced checkpoint said "ok": the run was found only from two written-out parents."""
    _, run = _copy(made, tmp_path)
    step = _replace_weights(run)
    monkeypatch.chdir(step if given == "from inside the checkpoint" else step.parent)
    assert main(["ckpt", "verify", "." if given == "from inside the checkpoint" else step.name]) == 4


def test_a_renamed_run_is_named_as_possibly_renamed_and_refused_alike(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A renamed run's checkpoint was "copied in" to `ckpt verify` and fine to validate; receipts verify named no
    fix."""
    root, run = _copy(made, tmp_path)
    renamed = run.rename(root / "renamed")
    step = renamed / "checkpoints" / "step-000006"
    capsys.readouterr()
    assert main(["ckpt", "verify", str(step)]) == 4
    assert f"rename it back to {run.name!r}" in capsys.readouterr().err
    assert main(["validate", "--config", TINY, "--ckpt_path", str(step)]) == 4
    assert main(["receipts", "verify", str(renamed)]) == 5
    assert f"rename it back to {run.name!r}" in capsys.readouterr().err


def test_ckpt_verify_of_a_run_says_ok_only_where_a_resume_would_go_on(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """It said "ok ... (what --ckpt_path last loads)" over a deleted log or a malformed run.json, which a resume
    refuses (exit 5)."""
    root, run = _copy(made, tmp_path)
    record = read_json(run / "run.json")
    (run / "run.json").write_text(json.dumps({**record, "global_step": "six"}))
    assert main(["ckpt", "verify", str(run)]) == 5
    assert main(["fit", "--config", TINY, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "8",
                 "--ckpt_path", "last"]) == 5  # fmt: skip
    atomic_write_json(run / "run.json", record)
    (run / "receipts.jsonl").unlink()
    capsys.readouterr()
    assert main(["ckpt", "verify", str(run)]) == 5
    assert "ok:" not in capsys.readouterr().out


def test_a_config_swapped_under_a_rewritten_run_json_is_refused(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """config.yaml edited and run.json's digest set to match: doctor said ok, and a resume recorded the forged
    value as the run's earlier setting. The training_run receipts record the configs the run trained with."""
    root, run = _copy(made, tmp_path)
    config = (run / "config.yaml").read_text()
    assert "lr: 0.003" in config
    (run / "config.yaml").write_text(config.replace("lr: 0.003", "lr: 0.03", 1))
    digest = hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest()
    atomic_write_json(run / "run.json", {**read_json(run / "run.json"), "config_digest": digest})
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 3
    assert "no training_run receipt records it" in capsys.readouterr().out
    assert main(["fit", "--config", TINY, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "8",
                 "--ckpt_path", "last"]) == 3  # fmt: skip
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before


def test_lit_psion_run_id_refuses_a_file_and_a_run_whose_checkpoints_are_gone(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Naming a file was exit 1 (FileExistsError); naming a completed run copied without its checkpoints retrained
    it from step 0 in its own directory, after its seal."""
    root, run = _copy(made, tmp_path)
    (root / "afile").write_text("x")
    monkeypatch.setenv("LIT_PSION_RUN_ID", "afile")
    args = ["fit", "--config", TINY, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "6"]
    capsys.readouterr()
    assert main(args) == 2
    assert "LIT_PSION_RUN_ID='afile' names" in capsys.readouterr().err
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    (root / "linked").symlink_to(tmp_path, target_is_directory=True)
    for named in ("dangling", "linked"):
        monkeypatch.setenv("LIT_PSION_RUN_ID", named)
        assert main(args) == 2
        assert f"LIT_PSION_RUN_ID={named!r} names" in capsys.readouterr().err
    shutil.rmtree(run / "checkpoints")
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    monkeypatch.setenv("LIT_PSION_RUN_ID", run.name)
    assert main(args) == 4
    assert "are gone" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before


def test_a_run_stopped_as_it_started_says_what_to_do(made: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Killed before its run.json (its first receipts written): every command said "restore it from a backup", of
    which there can be none."""
    _, run = _copy(made, tmp_path)
    for path in run.iterdir():
        if path.name not in ("receipts.jsonl", "data_manifest.json"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (run / "receipts.jsonl").write_text((run / "receipts.jsonl").read_text().splitlines(keepends=True)[0])
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 5
    assert "was stopped as it started" in capsys.readouterr().err


def test_a_number_too_long_to_read_names_the_file_not_a_python_setting(made: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """A 5001-digit step in run.json was refused with "use sys.set_int_max_str_digits() to increase the limit"."""
    root, run = _copy(made, tmp_path)
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text.replace('"global_step": 6', '"global_step": ' + "9" * 5001))
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 5
    assert main(["fit", "--config", TINY, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "8",
                 "--ckpt_path", "last"]) == 5  # fmt: skip
    captured = capsys.readouterr()
    assert "5001 digits" in captured.out + captured.err and "set_int_max_str_digits" not in captured.out + captured.err


def test_a_lost_or_broken_runs_index_says_how_to_continue_a_run(made: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """A malformed latest_run.json, or one naming a deleted run, said only "give --ckpt_path a checkpoint directory",
    which starts a new run; a root that is a file said "run once without it", which is then refused."""
    root, _ = _copy(made, tmp_path)
    last = ["fit", "--config", TINY, "--trainer.max_steps", "8", "--ckpt_path", "last"]
    for index in ("{", '{"run_id": "20200101-000000-000000"}'):
        (root / "latest_run.json").write_text(index)
        capsys.readouterr()
        assert main([*last, "--trainer.default_root_dir", str(root)]) == 4
        assert "give LIT_PSION_RUN_ID=<run id> and no --ckpt_path" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main([*last, "--trainer.default_root_dir", str(tmp_path / "afile")]) == 2
    assert "is a file, not a runs directory" in capsys.readouterr().err


def test_a_resume_says_it_will_replace_a_checkpoint_another_run_wrote(made: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """Another run's step-000009 in the run (doctor: "written by run X"): a resume from step 6 trained to step 9 and
    replaced it without a word. It is said, and receipted as a rejected checkpoint, before it is replaced."""
    root, run = _copy(made, tmp_path)
    foreign = run / "checkpoints" / "step-000009"
    shutil.copytree(run / "checkpoints" / "step-000006", foreign)
    atomic_write_json(foreign / "manifest.json", {**read_json(foreign / "manifest.json"), "run_id": "another-run"})
    capsys.readouterr()
    assert main(["fit", "--config", TINY, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "9",
                 "--checkpoint.every_n_train_steps", "3", "--ckpt_path", "last"]) == 0  # fmt: skip
    assert "step-000009: written by run 'another-run', not this one" in capsys.readouterr().err
    receipts = [json.loads(line)["body"] for line in (run / "receipts.jsonl").read_text().splitlines()]
    assert [r["checkpoint"] for r in receipts if r.get("durability") == "rejected"] == ["checkpoints/step-000009"]
    assert read_json(foreign / "manifest.json")["run_id"] == run.name and main(["doctor", str(run)]) == 0


def test_a_run_with_relative_data_paths_read_from_elsewhere_says_where_they_are_read_from(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From another directory, the relative path said "not found", and the same file by its absolute path said "give
    'fixtures/tiny_corpus.txt'", the path just not found: a circle."""
    root, _ = _copy(made, tmp_path)
    config, corpus = str(REPO_ROOT / TINY), str(REPO_ROOT / "fixtures" / "tiny_corpus.txt")
    monkeypatch.chdir(tmp_path)
    validate = ["validate", "--config", config, "--trainer.default_root_dir", str(root), "--ckpt_path", "last"]
    capsys.readouterr()
    assert main(validate) == 3
    assert f"a relative path is read from {str(tmp_path)!r}" in capsys.readouterr().err
    assert main([*validate, "--data.files", corpus]) == 3
    assert "from the directory the run's fit ran in" in capsys.readouterr().err


@pytest.mark.parametrize("place", ["receipts.jsonl", "run.json", "checkpoints/pointer.json",
                                   "checkpoints/step-000006/manifest.json"])  # fmt: skip
def test_a_key_given_twice_in_a_json_record_is_refused(made: Path, tmp_path: Path, place: str) -> None:
    """`"loss": 999.0, "loss": 3.4` in a receipt verified (the digest covers the value Python keeps, the last); a
    reader keeping the first would read another record under the same digest."""
    root, run = _copy(made, tmp_path)
    path = run / place
    text = path.read_text()
    key = {"receipts.jsonl": '"seq": ', "run.json": '"global_step": ', "checkpoints/pointer.json": '"step": ',
           "checkpoints/step-000006/manifest.json": '"step": '}[place]  # fmt: skip
    at = text.rindex(key)  # the last receipt's, in the log
    path.write_text(text[:at] + key + "999, " + text[at:])
    assert main(["receipts", "verify", str(run)]) != 0 or place.startswith("checkpoints/")
    assert main(["doctor", str(run)]) in (4, 5)
    resumed = main(["fit", "--config", TINY, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "8",
                    "--ckpt_path", "last"])  # fmt: skip
    assert resumed in ((0,) if place.startswith("checkpoints/") else (4, 5))  # (past a bad checkpoint: the one before)


def test_a_run_copied_with_hard_links_is_continued_without_touching_the_original(made: Path, tmp_path: Path) -> None:
    """``cp -al`` of a run, continued under another root: the copy's receipts and metrics rows were appended to the
    files both names share, so the original's chain ran on past its checkpoints and doctor failed it."""
    original = tmp_path / "original"
    shutil.copytree(made, original)
    run = original / read_latest(original)
    before = {name: (run / name).read_bytes() for name in ("receipts.jsonl", "metrics.csv")}
    linked = tmp_path / "linked"
    shutil.copytree(original, linked, copy_function=os.link)
    assert (linked / run.name / "receipts.jsonl").stat().st_nlink == 2
    assert main(["fit", "--config", TINY, "--trainer.default_root_dir", str(linked), "--trainer.max_steps", "9",
                 "--checkpoint.every_n_train_steps", "3", "--ckpt_path", "last"]) == 0  # fmt: skip
    assert {name: (run / name).read_bytes() for name in before} == before
    assert len((linked / run.name / "receipts.jsonl").read_bytes()) > len(before["receipts.jsonl"])
    assert main(["doctor", str(run)]) == 0 and main(["doctor", str(linked / run.name)]) == 0


def test_a_new_fit_over_a_paused_latest_run_says_how_that_one_is_continued(made: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """A fit started without --ckpt_path where the latest run is paused made the new run the one --ckpt_path last
    follows, without a word about the paused one (a new user then could not find how to continue it)."""
    root, run = _copy(made, tmp_path)
    atomic_write_json(run / "run.json", {**read_json(run / "run.json"), "status": "paused"})
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "2") == 0
    new = read_latest(root)
    assert (f"note: the latest run in {str(root)!r}, {run.name}, stopped paused at step 6; this fit starts a new "
            f"run, {new} (continue that one with LIT_PSION_RUN_ID={run.name} and no --ckpt_path)"
            ) in capsys.readouterr().err  # fmt: skip
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "2") == 0  # the latest: completed
    assert "note: the latest run" not in capsys.readouterr().err


def test_a_ctrl_c_as_a_new_run_starts_leaves_its_config_with_its_run_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.json (recording config.yaml's digest) was written before config.yaml: a Ctrl-C between the two left a
    paused run that `doctor` called damaged ("config.yaml: missing ... restore it from a backup", exit 3)."""
    from lit_psion.callbacks.run_dir import RunDirectory
    from lit_psion.core.run import RunStatus

    update = RunDirectory._update

    def interrupted_after_active(self, trainer, status, failure=None):
        update(self, trainer, status, failure)
        if status == RunStatus.ACTIVE:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDirectory, "_update", interrupted_after_active)
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3") == 130
    run = tmp_path / read_latest(tmp_path)
    assert read_json(run / "run.json")["status"] == "paused" and (run / "config.yaml").is_file()
    monkeypatch.undo()
    assert main(["doctor", str(run)]) == 0


@pytest.mark.parametrize("at", ["writing latest_run.json", "writing config.yaml", "writing the data manifest"])
def test_a_ctrl_c_while_a_run_starts_leaves_no_run_json_naming_files_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, at: str
) -> None:
    """A Ctrl-C before config.yaml (and the data manifest, latest_run.json) were written saved run.json anyway, naming
    their digests: doctor then asked to restore from a backup files that never existed. Now the run is left as one
    stopped as it started, which every command names as such."""
    from lit_psion.callbacks import run_dir as run_dir_module

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    real_text, real_json = run_dir_module.atomic_write_text, run_dir_module.atomic_write_json
    if at == "writing latest_run.json":
        monkeypatch.setattr(run_dir_module, "write_latest", interrupted)
    elif at == "writing config.yaml":
        monkeypatch.setattr(run_dir_module, "atomic_write_text", lambda path, *rest, **kw: interrupted() if Path(
            path).name == "config.yaml" else real_text(path, *rest, **kw))  # fmt: skip
    else:
        monkeypatch.setattr(run_dir_module, "atomic_write_json", lambda path, *rest, **kw: interrupted() if Path(
            path).name == "data_manifest.json" else real_json(path, *rest, **kw))  # fmt: skip
    root = tmp_path / "root"
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3") == 130
    monkeypatch.undo()
    run = next(path for path in root.iterdir() if path.is_dir())
    assert not (run / "run.json").exists()
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 5
    err = capsys.readouterr().err
    assert "was stopped as it started" in err and "backup" not in err
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3") == 0


@pytest.mark.parametrize("made_as", ["a directory", "a symlink"])  # (a FIFO: refused as any special file is)
def test_doctor_names_a_lock_no_writer_can_take(made: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                made_as: str) -> None:  # fmt: skip
    """A `.lock` that is a directory passed doctor ("all artifacts verified") while the resume refused it."""
    _, run = _copy(made, tmp_path)
    lock = run / ".lock"
    lock.unlink(missing_ok=True)
    lock.mkdir() if made_as == "a directory" else lock.symlink_to(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 2
    said = capsys.readouterr().out
    assert f"FAIL .lock: is {made_as}, not a lock file" in said
    assert [line for line in said.splitlines() if line.startswith("FAIL")] == [line for line in said.splitlines()
                                                                               if ".lock" in line]  # fmt: skip
    lock.rmdir() if made_as == "a directory" else lock.unlink()
    assert main(["doctor", str(run)]) == 0


@pytest.mark.parametrize(("edit", "said"), [
    ({"failure": "boom", "failure_class": "diverged"}, "it says completed, but records a failure (diverged: boom)"),
    ({"failure_class": "storage_full"}, "it says completed, but records a failure (storage_full: None)"),
    ({"stage": "finetune"}, "it says stage 'finetune', but the last training_run receipt records 'pretrain'"),
    ({"attempts": 0}, "it counts 0 attempts, but a run's record is written by one"),
    ({"status": "active"}, "it says active, but the chain is sealed: the run completed"),
    ({"status": "paused"}, "it says paused, but the chain is sealed: the run completed"),
    ({"global_step": 100}, "it says step 100, but the seal says step 6"),
    ({"config_digest": "0" * 64}, "its config_digest is not the last training_run receipt's ("),
    ({"model_signature": None}, "its model_signature is not the one the last training_run receipt records"),
], ids=["a failure on a completed run", "a failure class alone", "another stage", "no attempt", "active", "paused",
        "another step", "another config digest", "no model signature"])  # fmt: skip
def test_doctor_fails_a_run_json_that_contradicts_itself_or_its_receipts_and_a_resume_refuses_it(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture, edit: dict, said: str
) -> None:
    """Each of these edits passed doctor, receipts verify and ckpt verify (exit 0); once doctor failed them, a resume
    and ckpt verify still passed the last three, and the resume rewrote run.json over the edit."""
    root, run = _copy(made, tmp_path)
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, **edit}))
    edited = (run / "run.json").read_bytes()
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 5
    assert said in capsys.readouterr().out
    for argv in (["ckpt", "verify", str(run)], ["fit", "--config", TINY, "--trainer.default_root_dir", str(root),
                                                 "--trainer.max_steps", "8", "--ckpt_path", "last"]):  # fmt: skip
        assert main(argv) == 5, argv
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion:")]
        assert said in line and line.count("restore it from a backup") == 1, line
    assert (run / "run.json").read_bytes() == edited
