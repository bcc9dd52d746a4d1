"""Checkpoint integrity: any difference from the manifest is refused by name; `last` falls back safely."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import safetensors.torch
import torch
from lightning.pytorch.callbacks import Callback

from lit_psion import checkpoint_io
from lit_psion.checkpoint_io import STATE, WEIGHTS, ManifestCheckpointIO
from lit_psion.cli import main
from lit_psion.core import atomic_write_json, layout, read_json
from lit_psion.core.checkpoint import resolve_checkpoint, verify_checkpoint
from lit_psion.core.errors import CheckpointError, CheckpointWriteError
from lit_psion.core.run import read_latest
from tests.helpers import REPO_ROOT, callbacks_config, fit, fit_subprocess, latest_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "9") == 0
    return root / read_latest(root)


@pytest.fixture
def damaged(run_dir: Path, tmp_path: Path) -> Callable[[Callable[[Path], None]], Path]:
    """Copy the run, damage its newest checkpoint with ``harm``, return the copy."""

    def make(harm: Callable[[Path], None]) -> Path:
        copy = tmp_path / run_dir.name
        shutil.copytree(run_dir, copy)
        harm(copy / "checkpoints" / "step-000009")
        return copy

    return make


def _flip(name: str) -> Callable[[Path], None]:
    def harm(checkpoint: Path) -> None:
        data = bytearray((checkpoint / name).read_bytes())
        data[-len(data) // 3] ^= 0x01  # inside the tensor data, not the header
        (checkpoint / name).write_bytes(bytes(data))

    return harm


def _truncate(name: str) -> Callable[[Path], None]:
    return lambda checkpoint: (checkpoint / name).write_bytes((checkpoint / name).read_bytes()[:-100])


def _symlink(checkpoint: Path) -> None:
    target = checkpoint.parent / "elsewhere.safetensors"
    (checkpoint / WEIGHTS).rename(target)
    (checkpoint / WEIGHTS).symlink_to(target)


DAMAGE = [
    ("flip a byte in the weights", _flip(WEIGHTS), rf"{WEIGHTS}' is corrupt: expected sha256 [0-9a-f]{{64}}, got"),
    ("flip a byte in the trainer state", _flip(STATE), rf"{STATE}' is corrupt: expected sha256"),
    ("truncate the weights", _truncate(WEIGHTS), rf"{WEIGHTS}' is corrupt"),
    ("truncate the trainer state", _truncate(STATE), rf"{STATE}' is corrupt"),
    ("add a file", lambda c: (c / "extra.bin").write_bytes(b"x"), "does not list: 'extra.bin'"),
    ("remove a file", lambda c: (c / STATE).unlink(), rf"{STATE}' listed in the manifest is missing"),
    ("symlink a file", _symlink, rf"{WEIGHTS}' is a symlink"),
]


@pytest.mark.parametrize(("name", "harm", "message"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damage_is_refused_by_name_and_last_falls_back(
    name: str, harm: Callable, message: str, damaged: Callable, capsys: pytest.CaptureFixture
) -> None:
    run = damaged(harm)
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(run / "checkpoints" / "step-000009")
    with pytest.raises(CheckpointError, match=message):
        ManifestCheckpointIO().load_checkpoint(run / "checkpoints" / "step-000009")
    assert resolve_checkpoint(run).path.name == "step-000006"
    assert re.search(message, capsys.readouterr().err), "the fallback must say why"


def test_ckpt_verify_command(run_dir: Path, damaged: Callable, capsys: pytest.CaptureFixture) -> None:
    assert main(["ckpt", "verify", str(run_dir)]) == 0
    run = damaged(_flip(WEIGHTS))
    for older in (run / "checkpoints").glob("step-*"):
        if older.name != "step-000009":
            _flip(WEIGHTS)(older)
    capsys.readouterr()
    assert main(["ckpt", "verify", str(run)]) == 4
    assert "model.safetensors' is corrupt" in capsys.readouterr().err


def test_last_follows_the_pointer_not_modification_times(damaged: Callable) -> None:
    run = damaged(lambda c: None)
    older = run / "checkpoints" / "step-000006"
    future = time.time() + 3600
    for path in [older, *older.iterdir()]:
        os.utime(path, (future, future))
    assert resolve_checkpoint(run).path.name == "step-000009"
    assert read_json(run / "checkpoints" / "pointer.json")["step"] == 9


class _Payload:
    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(os.environ["MARKER"]),))


def test_a_pickle_payload_in_trainer_state_is_never_executed(
    damaged: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("MARKER", str(marker))

    def plant(checkpoint: Path) -> None:
        state = torch.load(checkpoint / STATE, weights_only=True)
        state["evil"] = _Payload()
        with open(checkpoint / STATE, "wb") as handle:
            pickle.dump(state, handle)  # a legacy pickle, as an attacker would write it

    run = damaged(plant)
    with pytest.raises(CheckpointError):  # the digest catches it first
        ManifestCheckpointIO().load_checkpoint(run / "checkpoints" / "step-000009")
    with pytest.raises(pickle.UnpicklingError):  # and weights_only=True would refuse it anyway
        torch.load(run / "checkpoints" / "step-000009" / STATE, weights_only=True)
    assert not marker.exists()


def test_every_torch_load_in_the_code_is_weights_only() -> None:
    packages = ("lit_psion", "callbacks", "datamodules", "strategies")
    sources = [path for package in packages for path in (REPO_ROOT / package).rglob("*.py")]
    calls = [(p, m) for p in sources for m in re.finditer(r"torch\.load\(([^)]*)\)", p.read_text())]
    assert calls, "the checkpoint loader uses torch.load"
    for path, match in calls:  # no call may leave weights_only unset or fall back to False
        assert "weights_only=True" in match.group(1), f"{path}: {match.group(0)}"


def test_resuming_past_a_corrupt_checkpoint_receipts_the_rejection(tmp_path: Path) -> None:
    root = ("--trainer.default_root_dir", str(tmp_path))
    assert fit(*root, "--trainer.max_steps", "6") == 0
    run = tmp_path / read_latest(tmp_path)
    _flip(WEIGHTS)(run / "checkpoints" / "step-000006")
    assert fit(*root, "--trainer.max_steps", "9", "--ckpt_path", "last") == 0
    chain = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    rejected = [r["body"] for r in chain if r["kind"] == "checkpoint" and r["body"]["durability"] == "rejected"]
    assert [r["checkpoint"] for r in rejected] == ["checkpoints/step-000006"]
    assert "model.safetensors' is corrupt" in rejected[0]["reason"]
    resumed = next(r["body"] for r in chain if r["kind"] == "trainer_step" and r["body"]["checkpoint"])
    assert resumed["checkpoint"] == "checkpoints/step-000003" and resumed["step_out"] == 4
    assert main(["receipts", "verify", str(run)]) == 0


@pytest.mark.parametrize(("name", "harm"), [(name, harm) for name, harm, _ in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_retention_does_not_count_a_rejected_checkpoint_nor_delete_the_last_verified_one(
    tmp_path: Path, name: str, harm: Callable[[Path], None]
) -> None:  # fmt: skip
    """Resumed past a damaged step-9, keep_last_k 3 counted it: steps 3 and 6 went, 9 stayed with 12 and 15, and
    the run's one verified checkpoint before the damage was lost."""
    root = ("--trainer.default_root_dir", str(tmp_path), "--checkpoint.every_n_train_steps", "3")
    assert fit(*root, "--trainer.max_steps", "9") == 0
    run = tmp_path / read_latest(tmp_path)
    harm(run / "checkpoints" / "step-000009")
    assert fit(*root, "--trainer.max_steps", "15", "--ckpt_path", "last") == 0
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert kept == ["step-000006", "step-000009", "step-000012", "step-000015"], kept
    assert verify_checkpoint(run / "checkpoints" / "step-000006").step == 6


class KillDuringPrune(Callback):
    """SIGKILL the (subprocess) fit while retention deletes an old checkpoint: one of its files gone, the rest not."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        original = shutil.rmtree

        def delete_one_then_die(path: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
            if not str(path).endswith(".tmp-pruned"):  # (the staging a killed write left: not this one)
                return original(path, *args, **kwargs)
            next(p for p in Path(path).iterdir() if p.is_file()).unlink()
            os.kill(os.getpid(), signal.SIGKILL)

        layout.shutil.rmtree = delete_one_then_die


def test_sigkill_during_retention_leaves_no_half_deleted_checkpoint(tmp_path: Path) -> None:
    root = ("--trainer.default_root_dir", str(tmp_path), "--checkpoint.every_n_train_steps", "2",
            "--checkpoint.keep_last_k", "1")  # fmt: skip
    result = fit_subprocess(*root, "--trainer.max_steps", "4", f"--trainer.callbacks+={__name__}.KillDuringPrune")
    assert result.returncode == -9, result.stderr[-2000:]
    run = tmp_path / read_latest(tmp_path)
    checkpoints = run / "checkpoints"
    assert [p.name for p in checkpoints.glob(".step-000002.tmp-*")], "the kill landed mid-delete"
    assert main(["doctor", str(run)]) == 0  # every checkpoint under a checkpoint's name is whole
    assert fit(*root, "--trainer.max_steps", "6", "--ckpt_path", "last") == 0
    assert not list(checkpoints.glob(".*")), "the next save removes what the killed delete left"


def _chain(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]


def _checkpoint_receipts(run: Path) -> list[tuple[int, str]]:
    return [(r["body"]["step"], r["body"]["durability"]) for r in _chain(run) if r["kind"] == "checkpoint"]


def test_sigkill_during_a_checkpoint_write_leaves_the_pointer_on_the_previous_one(tmp_path: Path) -> None:
    root = ("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "9")
    killed = callbacks_config(tmp_path / "kill.json", ("KillDuringCheckpointWrite", {"step": 6}))
    result = fit_subprocess(*root, "--config", killed)
    assert result.returncode == -9, result.stderr[-2000:]
    run = tmp_path / read_latest(tmp_path)
    checkpoints = run / "checkpoints"
    assert [p.name for p in checkpoints.glob(".step-000006.tmp-*")], "the kill landed mid-write"
    assert read_json(checkpoints / "pointer.json")["step"] == 3
    assert resolve_checkpoint(run).path.name == "step-000003"
    assert fit(*root, "--ckpt_path", "last") == 0
    assert not list(checkpoints.glob(".*")), "the next save removes what the killed write left"
    assert read_json(checkpoints / "pointer.json")["step"] == 9
    assert main(["receipts", "verify", str(run)]) == 0


def test_async_write_killed_before_durable_never_moves_the_pointer(tmp_path: Path) -> None:
    root = ("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "9", "--checkpoint.async_write", "true")
    killed = callbacks_config(
        tmp_path / "kill.json", ("SlowCheckpointWrites", {"step": 6, "seconds": 60}), ("KillAt", {"step": 7})
    )  # save(6) returns at once; its write is still stalled when step 7 ends and the process dies
    result = fit_subprocess(*root, "--config", killed)
    assert result.returncode == -9, result.stderr[-2000:]
    run = tmp_path / read_latest(tmp_path)
    assert (6, "async_write_in_flight") in _checkpoint_receipts(run)
    assert (6, "durable") not in _checkpoint_receipts(run)
    assert read_json(run / "checkpoints" / "pointer.json")["step"] == 3
    assert fit(*root, "--ckpt_path", "last") == 0
    assert latest_checkpoint(tmp_path)["global_step"] == 9
    assert not list((run / "checkpoints").glob(".*"))
    receipts = _checkpoint_receipts(run)
    assert receipts[-2:] == [(9, "async_write_in_flight"), (9, "durable")]
    assert main(["receipts", "verify", str(run)]) == 0


def test_async_writes_become_durable_in_order_and_retention_keeps_the_pointed(tmp_path: Path) -> None:
    root = ("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "12")
    assert fit(*root, "--checkpoint.async_write", "true", "--checkpoint.keep_last_k", "1") == 0
    run = tmp_path / read_latest(tmp_path)
    receipts = _checkpoint_receipts(run)
    assert receipts == [(s, d) for s in (3, 6, 9, 12) for d in ("async_write_in_flight", "durable")]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["pointer.json", "step-000012"]
    verify_checkpoint(run / "checkpoints" / "step-000012")


@pytest.mark.parametrize(
    ("async_write", "failure"),
    [(False, "raised"), (True, "raised"), (False, "swallowed"), (False, "state-file"), (True, "state-file")],
    ids=["sync", "async", "short-write-not-reported", "sync-state-file", "async-state-file"],
)
def test_disk_full_is_a_typed_failure_that_keeps_the_previous_checkpoint(
    async_write: bool, failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    writes = []

    def save_file(tensors: dict, filename: Path) -> None:
        writes.append(filename)
        safetensors.torch.save_file(tensors, filename)
        if len(writes) == 3:  # the step-9 checkpoint: the disk fills up part-way through the weights
            with open(filename, "r+b") as handle:
                handle.truncate(Path(filename).stat().st_size // 2)
            if failure == "raised":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    if failure == "state-file":  # the disk fills while torch.save writes trainer_state.pt

        class FullDisk:  # trainer_state.pt's file, on a disk that fills as torch.save writes into it
            def __init__(self, path: Path) -> None:
                self.handle = open(path, "wb")  # noqa: SIM115  (closed by __exit__)

            def write(self, data: object) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def flush(self) -> None:
                pass

            def __enter__(self) -> FullDisk:
                return self

            def __exit__(self, *exc: object) -> None:
                self.handle.close()

        save_file = safetensors.torch.save_file
        original_open = checkpoint_io._open_for_state
        monkeypatch.setattr(checkpoint_io, "_open_for_state",
                            lambda path: FullDisk(path) if len(writes) == 3 else original_open(path))  # fmt: skip

        def counting(tensors: dict, filename: Path) -> None:
            writes.append(filename)
            safetensors.torch.save_file(tensors, filename)

        save_file = counting
    monkeypatch.setattr(checkpoint_io, "save_file", save_file)
    root = ("--trainer.default_root_dir", str(tmp_path), "--checkpoint.keep_last_k", "2")
    code = fit(*root, "--checkpoint.async_write", str(async_write).lower())
    assert code == CheckpointWriteError.exit_code == 6
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("lit_psion: error: writing checkpoint")
    assert ("short write" if failure == "swallowed" else "No space left on device") in error
    assert "the previous checkpoint is still the pointed-to one" in error
    run = tmp_path / read_latest(tmp_path)
    record = read_json(run / "run.json")
    assert (record["status"], record["failure_class"]) == ("failed", "checkpoint_flush_failed")
    checkpoints = run / "checkpoints"
    assert read_json(checkpoints / "pointer.json")["step"] == 6
    # retention did not run for the failed write: with keep_last_k 2 it would have removed step 3
    assert sorted(p.name for p in checkpoints.iterdir()) == ["pointer.json", "step-000003", "step-000006"]
    verify_checkpoint(checkpoints / "step-000006")
    assert (9, "durable") not in _checkpoint_receipts(run)
    assert main(["receipts", "verify", str(run)]) == 0


def test_a_full_disk_at_the_first_checkpoint_says_there_is_none_to_continue_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """It said "the previous checkpoint is still the pointed-to one (..., then --ckpt_path last)", and that resume
    then found no checkpoint."""

    def full(tensors: dict, filename: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(checkpoint_io, "save_file", full)
    assert fit("--trainer.default_root_dir", str(tmp_path)) == 6
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no earlier checkpoint to continue from" in error and "run the fit again without --ckpt_path" in error
    monkeypatch.undo()
    assert fit("--trainer.default_root_dir", str(tmp_path)) == 0, "as it says"


def test_ckpt_verify_takes_one_checkpoint_directory(run_dir: Path, damaged: Callable, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    assert main(["ckpt", "verify", str(run_dir / "checkpoints" / "step-000006")]) == 0
    assert "step 6, written by run" in capsys.readouterr().out
    run = damaged(_flip(WEIGHTS))
    assert main(["ckpt", "verify", str(run / "checkpoints" / "step-000009")]) == 4  # no fallback: this one
    assert "model.safetensors' is corrupt" in capsys.readouterr().err
    (run / "checkpoints" / "step-000009" / "manifest.json").unlink()  # was exit 2, "not a run directory"
    assert main(["ckpt", "verify", str(run / "checkpoints" / "step-000009")]) == 4
    assert "has no manifest.json" in capsys.readouterr().err
    # Another run's checkpoint copied in (it verifies on its own) is not this run's.
    other = tmp_path / "other"
    assert fit("--trainer.default_root_dir", str(other), "--trainer.max_steps", "3") == 0
    stranger = run / "checkpoints" / "step-000003"
    shutil.rmtree(stranger, ignore_errors=True)
    shutil.copytree(other / read_latest(other) / "checkpoints" / "step-000003", stranger)
    assert main(["ckpt", "verify", str(stranger)]) == 4
    assert "was written by run" in capsys.readouterr().err
    # Outside any run, the directory is checked against its own manifest only.
    loose = tmp_path / "loose" / "step-000003"
    shutil.copytree(stranger, loose)
    assert main(["ckpt", "verify", str(loose)]) == 0


def test_the_manifest_records_the_digest_and_size_of_the_bytes_each_file_holds(tmp_path: Path) -> None:
    state = {"state_dict": {"w": torch.randn(64, 32), "tied": torch.randn(8)}, "global_step": 3, "epoch": 0,
             "optimizer_states": [{"state": {0: {"exp_avg": torch.randn(64, 32)}}, "param_groups": []}]}  # fmt: skip
    checkpoint_io.write_checkpoint(state, tmp_path / "step-000003")
    manifest = read_json(tmp_path / "step-000003" / "manifest.json")
    assert set(manifest["files"]) == {WEIGHTS, STATE}
    for name, record in manifest["files"].items():
        data = (tmp_path / "step-000003" / name).read_bytes()
        assert record == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    verify_checkpoint(tmp_path / "step-000003")




def test_a_fit_that_fails_with_a_write_in_flight_ends_with_it_durable_and_its_evidence_consistent(
    tmp_path: Path,
) -> None:
    """The failure's records (run.json's head, the failed run receipt) come after the in-flight write's
    durable receipt, so ``receipts verify`` finds nothing appended after the run ended."""
    root = ("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "9", "--checkpoint.async_write", "true",
            "--dashboard.enabled", "true")  # fmt: skip
    failing = callbacks_config(tmp_path / "fail.json", ("SlowCheckpointWrites", {"step": 6, "seconds": 3}))
    assert fit(*root, "--config", failing, "--trainer.callbacks+=tests.callbacks.test_reports.FailAtStep") == 14
    run = tmp_path / read_latest(tmp_path)
    assert read_json(run / "checkpoints" / "pointer.json")["step"] == 6
    assert _checkpoint_receipts(run)[-1] == (6, "durable")
    assert read_json(run / "run.json")["status"] == "failed"
    assert main(["receipts", "verify", str(run)]) == 0
    page = (run / "dashboard" / "index.html").read_text()
    assert "step-000006" in page and "step-000003" not in page  # drawn once the write in flight had landed


def test_every_file_of_a_checkpoint_and_a_run_record_gets_the_umask_mode_like_any_other_file(tmp_path: Path) -> None:
    """Temp-file writes (mkstemp: 0600) and safetensors (0600) must not leave files others sharing the runs
    directory can read in part only (a manifest but not its weights)."""
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")  # what open() gives under this process's umask
    expected = plain.stat().st_mode & 0o777
    checkpoint_io.write_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 1}, tmp_path / "step-000001")
    atomic_write_json(tmp_path / "run.json", {"a": 1})
    for path in [*(tmp_path / "step-000001").iterdir(), tmp_path / "run.json"]:
        assert path.stat().st_mode & 0o777 == expected, path.name


def test_a_real_write_limit_on_the_weights_is_exit_6_with_nothing_staged_left(tmp_path: Path) -> None:
    """A file-size limit makes the kernel refuse the weights' bytes (EFBIG) as a full disk would (ENOSPC):
    safetensors reports it as its own SafetensorError, which was an unexpected error (exit 1), with the
    staging directory left behind. The limit lets every other file of the run through (each under 100 kB)."""
    import resource
    import subprocess
    import sys

    from tests.helpers import TINY, subprocess_env

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # the weights are ~110 kB

    env = {**subprocess_env(), "LIT_PSION_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "lit_psion", "fit", "--config", TINY, "--trainer.max_steps", "3",
               "--trainer.default_root_dir", str(tmp_path / "runs")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, preexec_fn=limit)
    assert result.returncode == CheckpointWriteError.exit_code == 6, result.stderr[-2000:]
    assert "writing checkpoint" in result.stderr and "File too large" in result.stderr
    run = tmp_path / "runs" / read_latest(tmp_path / "runs")
    record = read_json(run / "run.json")
    assert (record["status"], record["failure_class"]) == ("failed", "checkpoint_flush_failed")
    assert [p.name for p in (run / "checkpoints").iterdir()] == []  # nothing staged is left


def test_a_refused_pickle_is_named_without_torchs_advice_to_load_it_unsafely(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The line quoted torch's whole message, which suggests re-running with weights_only=False."""
    import io

    monkeypatch.setenv("MARKER", str(tmp_path / "pwned"))
    from lit_psion.core.errors import load_refusal

    buffer = io.BytesIO()
    torch.save({"evil": _Payload()}, buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError) as refused:
        torch.load(buffer, weights_only=True)
    said = load_refusal(refused.value)
    assert said.startswith("it holds a pickled ") and "which loading would run" in said, said
    assert "weights_only" not in said and "False" not in said
