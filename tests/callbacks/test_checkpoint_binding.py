"""A resume loads only a checkpoint of its own run, model and data, from inside its own root."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

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
    assert f"was written by run {other.run_id!r}" in err and "resuming from step-000003" in err
    chain = [json.loads(line) for line in mine.receipts.read_text().splitlines()]
    resumed = next(r["body"] for r in chain if r["kind"] == "trainer_step" and r["body"]["checkpoint"])
    assert resumed["checkpoint"] == "checkpoints/step-000003"


MISMATCHES = [
    ("same shapes, other attention heads", ("--model.init_args.decoder.n_head", "4"), 4, "signature"),
    ("other dropout", ("--model.init_args.decoder.dropout", "0.0"), 4, "signature"),
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
    assert _resume(tmp_path) == 0  # the lock went with its process
