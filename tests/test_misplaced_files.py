"""Something other than lit_psion's file where a run or its root keeps one: a file where a checkpoint directory
goes, a directory where the pointer or ``latest_run.json`` goes, a FIFO as the lock, a record holding what is no
text. Each is taken in its stride or refused in one line before anything is trained; none ended in exit 1 (two of
them after training had run)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.run import read_latest
from tests.helpers import TINY, fit


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("made")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "6",
               "--checkpoint.every_n_train_steps", "3") == 0  # fmt: skip
    return root


def _file_where_the_next_checkpoint_goes(run: Path) -> None:
    (run / "checkpoints" / "step-000009").write_text("not a checkpoint")


def _file_where_the_pointed_checkpoint_was(run: Path) -> None:
    shutil.rmtree(run / "checkpoints" / "step-000006")
    (run / "checkpoints" / "step-000006").write_text("not a checkpoint")


def _directory_as_the_pointer(run: Path) -> None:
    (run / "checkpoints" / "pointer.json").unlink()
    (run / "checkpoints" / "pointer.json").mkdir()


def _fifo_as_the_lock(run: Path) -> None:
    (run / ".lock").unlink(missing_ok=True)
    os.mkfifo(run / ".lock")


def _run_json_naming_another_run(run: Path) -> None:
    (run / "run.json").write_text((run / "run.json").read_text().replace(run.name, "x", 1))


CASES = [  # what takes a file's place: the resume's exit code and the step the run is at after it
    ("a file where the next checkpoint goes", _file_where_the_next_checkpoint_goes, 0, 9),
    ("a file where the pointed checkpoint was", _file_where_the_pointed_checkpoint_was, 0, 9),
    ("a directory as the pointer", _directory_as_the_pointer, 4, 6),
    ("a FIFO as the lock", _fifo_as_the_lock, 2, 6),
    ("a run.json naming another run", _run_json_naming_another_run, 5, 6),  # (the resume kept the forged id)
]


@pytest.mark.parametrize(("name", "put", "code", "step"), CASES, ids=[c[0] for c in CASES])
def test_a_resume_takes_a_misplaced_entry_in_its_stride_or_refuses_before_training(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, put: object, code: int, step: int
) -> None:  # fmt: skip
    root = tmp_path / "root"
    shutil.copytree(made, root, symlinks=True)
    run = root / read_latest(root)
    put(run)  # type: ignore[operator]
    receipts = (run / "receipts.jsonl").read_bytes()
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "9",
               "--checkpoint.every_n_train_steps", "3", "--ckpt_path", "last") == code  # fmt: skip
    err = capsys.readouterr().err
    assert read_json(run / "run.json")["global_step"] == step, err
    if code:
        lines = [line for line in err.splitlines() if line.startswith("lit_psion: error:")]
        assert len(lines) == 1 and "unexpected error" not in err, err
        assert (run / "receipts.jsonl").read_bytes() == receipts  # nothing trained, nothing written
    else:
        assert (run / "checkpoints" / "step-000009").is_dir()
        assert main(["doctor", str(run)]) == 0


def test_a_directory_as_the_roots_latest_run_file_is_refused_before_a_run_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:  # fmt: skip
    """It was exit 1 with a half-made run left behind (run.json ``failed``, no config.yaml: doctor exit 3)."""
    (tmp_path / "latest_run.json").mkdir()
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"lit_psion: error: {str(tmp_path / 'latest_run.json')!r} is not a file"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest_run.json"]


RECORDS = ["run.json", "data_manifest.json", "checkpoints/pointer.json", "checkpoints/step-000006/manifest.json"]


@pytest.mark.parametrize("record", RECORDS)
@pytest.mark.parametrize("command", ["doctor", "ckpt verify", "receipts verify", "resume"])
def test_a_record_holding_a_lone_surrogate_is_refused_as_damaged_never_exit_1(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture, record: str, command: str
) -> None:  # fmt: skip
    """JSON parses ``"\\ud800"``, but it is no text: digesting it raised UnicodeEncodeError deep inside doctor's
    token-cache check (exit 1)."""
    root = tmp_path / "root"
    shutil.copytree(made, root, symlinks=True)
    run = root / read_latest(root)
    text = (run / record).read_text()
    field = next(key for key in ('"run_id": "', '"path": "', '"checkpoint": "', '"writer": "') if key in text)
    (run / record).write_text(text.replace(field, field + "\\ud800", 1))
    capsys.readouterr()
    if command == "resume":
        code = fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "9", "--ckpt_path", "last")
    else:
        code = main([*command.split(), str(run)])
    err = capsys.readouterr().err
    assert code != 1 and "unexpected error" not in err and "Traceback" not in err, (code, err)
    if command == "doctor":  # it reads every record: each is damaged
        assert code != 0, err


def test_a_path_too_long_for_the_file_system_is_exit_2_from_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A name over 255 bytes: every command said "unexpected error: OSError: [Errno 36] File name too long" (exit 1)."""
    assert fit("--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.max_steps", "1") == 0
    run = str(tmp_path / "runs" / read_latest(tmp_path / "runs"))
    long = str(tmp_path / ("x" * 300))
    for argv in (["fit", "--config", TINY, "--trainer.default_root_dir", long], ["compare", run, "--out", long],
                 ["window", "verify", long], ["generate", long], ["session", "list", "--artifacts_root", long],
                 ["adapter", "inspect", long], ["receipts", "verify", long], ["doctor", long], ["ckpt", "verify", long],
                 ["fit", "--config", TINY, "--data.files", long, "--trainer.default_root_dir",
                  str(tmp_path / "r")]):  # fmt: skip
        capsys.readouterr()
        assert main(argv) == 2, argv
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "is too long for the file system" in line and "x" * 300 in line, (argv, line)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("where", ["checkpoints/extra/step-000006", "step-000006", "consolidated/x/step-000006"])
def test_a_checkpoint_inside_a_run_but_none_of_its_checkpoints_is_refused(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    """A checkpoint directory put elsewhere in a run (another run's weights, its manifest naming this run) passed
    ckpt verify, and validate and generate used it without a word: no receipt of the run holds it, yet it sat in
    the run as if the run had written it."""
    root = tmp_path / "runs"
    shutil.copytree(made, root)
    run = root / read_latest(root)
    stray = run / where
    shutil.copytree(run / "checkpoints" / "step-000006", stray)
    capsys.readouterr()
    for command in (["ckpt", "verify", str(stray)], ["validate", "--config", TINY, "--ckpt_path", str(stray)],
                    ["generate", str(stray), "--tokens", "4", "--tokenizer", str(run / "tokenizer.json")]):  # fmt: skip
        assert main(command) == 4, command
        err = capsys.readouterr().err
        assert f"is inside run {run.name!r} but is none of its checkpoints" in err, (command, err)
    shutil.copytree(stray, tmp_path / "outside" / "step-000006")  # a copy taken out of the run: one on its own
    assert main(["ckpt", "verify", str(tmp_path / "outside" / "step-000006")]) == 0
