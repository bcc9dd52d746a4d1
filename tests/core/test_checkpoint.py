"""Checkpoint truth in core: manifests, pointer, verification, and a resume that hashes each file once."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from lit_psion.core import RunLayout
from lit_psion.core.checkpoint import MANIFEST_FILE, CheckpointManifest, resolve_checkpoint, verify_checkpoint
from lit_psion.core.errors import CheckpointError
from lit_psion.core.layout import step_name, step_of
from lit_psion.core.pointer import CheckpointPointer, read_pointer, write_pointer
from lit_psion.core.run import read_latest
from tests.helpers import fit


def make_checkpoint(directory: Path, step: int, files: dict[str, bytes]) -> Path:
    """A checkpoint directory with a correct manifest over ``files``."""
    path = directory / step_name(step)
    path.mkdir(parents=True)
    records = {}
    for name, data in files.items():
        (path / name).write_bytes(data)
        records[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / MANIFEST_FILE).write_text(json.dumps({"step": step, "files": records, "run_id": directory.parent.name}))
    return path


@pytest.fixture
def layout(tmp_path: Path) -> RunLayout:
    layout = RunLayout(tmp_path, "run-a")
    layout.run_dir.mkdir()
    layout.run_file.write_text("{}")
    return layout


def test_layout_names_every_path_of_a_run(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path, "r1")
    assert layout.run_dir == tmp_path / "r1" and layout.latest == tmp_path / "latest_run.json"
    assert layout.checkpoint(100) == tmp_path / "r1" / "checkpoints" / "step-000100"
    assert layout.pointer.parent == layout.checkpoints and RunLayout.of(layout.run_dir) == layout
    assert [step_of("step-000100"), step_of("step-1000000"), step_of(".step-000001.tmp-3"), step_of("x")] == [
        100, 1000000, None, None]  # fmt: skip


def test_checkpoint_dirs_order_by_step_not_by_name(layout: RunLayout) -> None:
    for step in (999999, 1000000, 5):
        make_checkpoint(layout.checkpoints, step, {"a": b"x"})
    (layout.checkpoints / ".step-000007.tmp-1").mkdir()
    assert [step_of(p.name) for p in layout.checkpoint_dirs()] == [5, 999999, 1000000]


def test_verify_returns_the_bytes_it_hashed(layout: RunLayout) -> None:
    path = make_checkpoint(layout.checkpoints, 3, {"w": b"weights", "s": b"state"})
    verified = verify_checkpoint(path)
    assert verified.contents == {"w": b"weights", "s": b"state"} and verified.step == 3
    assert verified.manifest_sha256 == hashlib.sha256((path / MANIFEST_FILE).read_bytes()).hexdigest()
    assert verified.manifest.run_id == "run-a"


def _saved(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


SHARDS = {"__0_0.distcp": b"shard zero", "__1_0.distcp": b"shard one", ".metadata": pickle.dumps("meta"),
          "trainer_state.pt": _saved({"global_step": 3})}  # fmt: skip


def test_a_sharded_checkpoint_verifies_every_shard_but_holds_none_of_them(layout: RunLayout) -> None:
    """Every rank verifies every shard; holding them all would put the whole model in each rank's memory."""
    verified = verify_checkpoint(make_checkpoint(layout.checkpoints, 3, SHARDS))
    assert verified.sharded and set(verified.contents) == {".metadata", "trainer_state.pt"}
    assert {name: verified.read(name) for name in SHARDS} == SHARDS


SHARD_CHANGES = {
    "a byte flipped": (lambda f: f.write_bytes(b"shard Zero"), "is corrupt"),
    "removed": (lambda f: f.unlink(), "missing"),
    "replaced by a symlink": (lambda f: (f.unlink(), f.symlink_to(f.parent / "__1_0.distcp")), "symlink"),
    "truncated": (lambda f: f.write_bytes(b""), "is corrupt"),
    "replaced by a FIFO": (lambda f: (f.unlink(), os.mkfifo(f)), "missing"),  # refused, never a hang on open
}


@pytest.mark.parametrize("change", SHARD_CHANGES)
def test_a_shard_changed_after_verification_is_refused_when_read(layout: RunLayout, change: str) -> None:
    verified = verify_checkpoint(make_checkpoint(layout.checkpoints, 3, SHARDS))
    tamper, message = SHARD_CHANGES[change]
    tamper(verified.path / "__0_0.distcp")
    with pytest.raises(CheckpointError, match=f"{message}.*changed after the checkpoint was verified"):
        verified.read("__0_0.distcp")
    assert verified.read("__1_0.distcp") == b"shard one" and verified.read(".metadata") == SHARDS[".metadata"]


def test_a_shard_is_refused_at_verification_as_before(layout: RunLayout) -> None:
    path = make_checkpoint(layout.checkpoints, 3, SHARDS)
    (path / "__1_0.distcp").write_bytes(b"shard One")
    with pytest.raises(CheckpointError, match=r"__1_0\.distcp' is corrupt"):
        verify_checkpoint(path)


def test_read_refuses_a_name_the_manifest_does_not_list(layout: RunLayout) -> None:
    verified = verify_checkpoint(make_checkpoint(layout.checkpoints, 3, SHARDS))
    (verified.path / "__2_0.distcp").write_bytes(b"planted")
    with pytest.raises(CheckpointError, match=r"'__2_0\.distcp' is not listed"):
        verified.read("__2_0.distcp")


MALFORMED = [
    ("not JSON", b"{", "not valid JSON"),
    ("not an object", b"[]", "not a JSON object"),
    ("no files", b'{"step": 3}', "malformed"),
    ("step not an integer", b'{"step": "3", "files": {}}', "not an integer"),
    ("a file outside the checkpoint", b'{"step": 3, "files": {"../x": {"sha256": "0", "bytes": 1}}}',
     "not a plain file name"),
    ("a climb inside a nested path", b'{"step": 3, "files": {"a/../../x": {"sha256": "0", "bytes": 1}}}',
     "not a plain file name"),
    ("an absolute path", b'{"step": 3, "files": {"/etc/passwd": {"sha256": "0", "bytes": 1}}}',
     "not a plain file name"),
    ("a dot component", b'{"step": 3, "files": {"a/./x": {"sha256": "0", "bytes": 1}}}', "not a plain file name"),
    ("an empty component", b'{"step": 3, "files": {"a//x": {"sha256": "0", "bytes": 1}}}', "not a plain file name"),
    ("a backslash", b'{"step": 3, "files": {"a\\\\x": {"sha256": "0", "bytes": 1}}}', "not a plain file name"),
]


@pytest.mark.parametrize(("name", "manifest", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_manifest_is_a_checkpoint_error(layout: RunLayout, name: str, manifest: bytes,
                                                    message: str) -> None:  # fmt: skip
    path = make_checkpoint(layout.checkpoints, 3, {})
    (path / MANIFEST_FILE).write_bytes(manifest)
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(path)


def make_nested(directory: Path) -> Path:
    """A checkpoint whose manifest lists files in a subdirectory (the layout DeepSpeed writes)."""
    path = make_checkpoint(directory, 3, {"latest": b"checkpoint"})
    (path / "checkpoint").mkdir()
    files = {"checkpoint/mp_rank_00_model_states.pt": b"model", "checkpoint/zero_pp_rank_1_optim_states.pt": b"opt"}
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    for name, data in files.items():
        (path / name).write_bytes(data)
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    return path


def test_a_nested_manifest_verifies_every_file_and_names_its_layout(layout: RunLayout) -> None:
    verified = verify_checkpoint(make_nested(layout.checkpoints))
    assert verified.read("checkpoint/zero_pp_rank_1_optim_states.pt") == b"opt"
    assert verified.layout == "deepspeed" and not verified.sharded


NESTED_TAMPERING = {
    "nested byte flipped": (lambda p: (p / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"modeL"),
                            "is corrupt"),
    "nested extra file": (lambda p: (p / "checkpoint" / "zero_pp_rank_2_optim_states.pt").write_bytes(b"x"),
                          "does not list: 'checkpoint/zero_pp_rank_2_optim_states.pt'"),
    "nested file missing": (lambda p: (p / "checkpoint" / "zero_pp_rank_1_optim_states.pt").unlink(), "missing"),
    "subdirectory symlinked": (lambda p: _relink(p / "checkpoint"), "symlink"),
    "nested file symlinked": (lambda p: _relink(p / "checkpoint" / "mp_rank_00_model_states.pt"), "symlink"),
}  # fmt: skip


def _relink(path: Path) -> None:
    """Move ``path`` out of the checkpoint and leave a symlink to it in its place (same bytes, other place)."""
    moved = path.parent.parent.parent / f"moved-{path.name}"
    path.rename(moved)
    path.symlink_to(moved)


@pytest.mark.parametrize("case", NESTED_TAMPERING)
def test_a_nested_checkpoint_is_held_to_its_manifest(layout: RunLayout, case: str) -> None:
    tamper, message = NESTED_TAMPERING[case]
    path = make_nested(layout.checkpoints)
    tamper(path)
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(path)


def test_a_symlinked_checkpoint_directory_is_refused(layout: RunLayout, tmp_path: Path) -> None:
    real = make_checkpoint(tmp_path / "elsewhere", 3, {"a": b"x"})
    layout.checkpoints.mkdir()
    (layout.checkpoints / step_name(3)).symlink_to(real)
    with pytest.raises(CheckpointError, match="is a symlink"):
        verify_checkpoint(layout.checkpoints / step_name(3))


POINTERS = [
    ("empty", ""),
    ("not JSON", "{"),
    ("missing keys", '{"step": 3}'),
    ("escapes the run", '{"step": 3, "checkpoint": "../../other/checkpoints/step-000003", "manifest_sha256": "0"}'),
    ("absolute path", '{"step": 3, "checkpoint": "/tmp/step-000003", "manifest_sha256": "0"}'),
]


@pytest.mark.parametrize(("name", "text"), POINTERS, ids=[p[0] for p in POINTERS])
def test_a_bad_pointer_falls_back_to_the_newest_checkpoint_that_verifies(
    layout: RunLayout, name: str, text: str
) -> None:
    make_checkpoint(layout.checkpoints, 3, {"a": b"x"})
    make_checkpoint(layout.checkpoints, 6, {"a": b"y"})
    layout.pointer.write_text(text)
    with pytest.raises(CheckpointError):
        read_pointer(layout)
    rejected: list = []
    assert resolve_checkpoint(layout, rejected, quiet=True).step == 6


def test_the_pointed_checkpoint_wins_and_a_swapped_manifest_is_refused(layout: RunLayout) -> None:
    three = verify_checkpoint(make_checkpoint(layout.checkpoints, 3, {"a": b"x"}))
    make_checkpoint(layout.checkpoints, 6, {"a": b"y"})
    write_pointer(layout, three)
    assert read_pointer(layout) == CheckpointPointer(step=3, checkpoint="step-000003",
                                                     manifest_sha256=three.manifest_sha256)  # fmt: skip
    assert resolve_checkpoint(layout).step == 3
    manifest = layout.checkpoint(3) / MANIFEST_FILE
    manifest.write_text(manifest.read_text() + " ")  # still a valid manifest, but not the one pointed at
    rejected: list = []
    assert resolve_checkpoint(layout, rejected, quiet=True).step == 6
    assert "does not match the digest in the pointer" in rejected[0].reason


def test_no_pointer_and_nothing_that_verifies_is_refused(layout: RunLayout) -> None:
    with pytest.raises(CheckpointError, match="no durable checkpoint yet"):
        resolve_checkpoint(layout)
    with pytest.raises(CheckpointError) as refused:  # a resume: the run itself can be trained again in its place
        resolve_checkpoint(layout, resuming=True)
    assert f"or this one again from step 0 in its place (LIT_PSION_RUN_ID={layout.run_id} and no" in str(refused.value)


def test_a_run_started_by_mistake_names_the_run_it_hides(layout: RunLayout) -> None:
    """A paused run, then a new fit started without --ckpt_path and stopped before its first checkpoint:
    latest_run.json names the new one, and the refusal never said the paused run could be continued."""
    paused, done = RunLayout(layout.root, "run-0-paused"), RunLayout(layout.root, "run-0-done")
    failed = RunLayout(layout.root, "run-9-failed")  # the newest, diverged: named only when nothing else is there
    for other, status in ((paused, "paused"), (done, "completed"), (failed, "failed")):
        other.checkpoints.mkdir(parents=True)
        other.run_file.write_text(json.dumps({"status": status, "global_step": 7}))
        other.pointer.write_text("{}")
    with pytest.raises(CheckpointError, match="; run run-0-paused in the same root has one \\(paused at step 7\\): "
                       "continue it with LIT_PSION_RUN_ID=run-0-paused and no --ckpt_path"):  # fmt: skip
        resolve_checkpoint(layout, resuming=True)
    with pytest.raises(CheckpointError, match=r"give a run that has one \(a run still training writes one at its "
                       r"first checkpoint step; one that stopped before it never will\)$"):  # fmt: skip
        resolve_checkpoint(layout)  # a reader (generate, ckpt verify, adapter export) is not told to train
    paused.pointer.unlink()  # a completed run may be continued too (a new run that failed before its first
    with pytest.raises(CheckpointError, match=re.escape(
            "; run run-0-done in the same root has one (completed at step 7): continue it with "
            "LIT_PSION_RUN_ID=run-0-done and no --ckpt_path and a larger --trainer.max_steps")):  # checkpoint hid it)
        resolve_checkpoint(layout, resuming=True)
    done.pointer.unlink()
    with pytest.raises(CheckpointError, match="; run run-9-failed in the same root has one \\(failed at step 7\\)"):
        resolve_checkpoint(layout, resuming=True)
    failed.pointer.unlink()  # none left to continue: nothing more is said
    with pytest.raises(CheckpointError, match=r"one that stopped before it never will$"):
        resolve_checkpoint(layout, resuming=True)


def test_a_restore_passes_over_a_checkpoint_an_uninterrupted_run_does_not_have(layout: RunLayout) -> None:
    """A transactional run paused by SIGTERM at step 39 restored its step-39 pause checkpoint at the next failing
    streak, where the uninterrupted run restored step 30: the resumed run trained on from other weights."""
    from lit_psion.core.checkpoint import CheckpointReceipts
    from lit_psion.core.receipted import restore_target

    receipts = CheckpointReceipts()
    make_checkpoint(layout.checkpoints, 5, {"a": b"pause"})  # a pause's (or an earlier fit's max_steps) only
    write_pointer(layout, verify_checkpoint(layout.checkpoint(5)))
    assert restore_target(layout, 2, receipts) is None  # no scheduled checkpoint yet: as the uninterrupted run
    assert restore_target(layout, None, receipts).step == 5  # no schedule known: the newest
    four = make_checkpoint(layout.checkpoints, 4, {"a": b"scheduled"})
    assert restore_target(layout, 2, receipts).step == 4
    (four / "a").write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match="no scheduled checkpoint of run 'run-a' verifies \\(step-000004: "):
        restore_target(layout, 2, receipts)
    make_checkpoint(layout.checkpoints, 6, {"a": b"next"})
    write_pointer(layout, verify_checkpoint(layout.checkpoint(6)))
    assert restore_target(layout, 2, receipts).step == 6


def test_a_lost_pointer_falls_back_to_the_newest_checkpoint_that_verifies(layout: RunLayout) -> None:
    make_checkpoint(layout.checkpoints, 3, {"a": b"x"})
    make_checkpoint(layout.checkpoints, 6, {"a": b"y"})
    assert not layout.pointer.exists()
    rejected: list = []
    assert resolve_checkpoint(layout, rejected, quiet=True).step == 6
    (layout.checkpoint(6) / "a").write_bytes(b"z")  # the newest fails its digest: the next one
    assert resolve_checkpoint(layout, quiet=True).step == 3


def test_manifest_round_trip() -> None:
    record = {"step": 3, "files": {"a": {"sha256": "0" * 64, "bytes": 1}}, "cursor": {"epoch": 0, "position": 8},
              "future_field": "ignored"}  # fmt: skip
    manifest = CheckpointManifest.from_json_dict(record)
    assert manifest.to_json_dict()["cursor"] == {"epoch": 0, "position": 8}
    assert CheckpointManifest.from_json_dict(manifest.to_json_dict()) == manifest


class _Spy:
    """Counts the opens of files under one directory and the sha256 digests computed, by value."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
        self.directory, self.opened, self.digests = str(directory), [], []
        real_open, real_sha256 = io.open, hashlib.sha256
        spy = self

        def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, str | Path) and str(file).startswith(spy.directory):
                spy.opened.append(Path(file).name)
            return real_open(file, *args, **kwargs)

        class CountingHash:
            def __init__(self, data: bytes = b"", **kwargs: Any) -> None:
                self.inner = real_sha256(data, **kwargs)

            def update(self, data: bytes) -> None:
                self.inner.update(data)

            def hexdigest(self) -> str:
                spy.digests.append(self.inner.hexdigest())
                return spy.digests[-1]

        monkeypatch.setattr(io, "open", counting_open)
        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(hashlib, "sha256", CountingHash)


def test_a_resume_reads_and_hashes_each_checkpoint_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "6") == 0
    layout = RunLayout(tmp_path, read_latest(tmp_path))
    checkpoint = layout.checkpoint(6)
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    expected = {name: record["sha256"] for name, record in manifest["files"].items()}
    expected[MANIFEST_FILE] = hashlib.sha256((checkpoint / MANIFEST_FILE).read_bytes()).hexdigest()
    spy = _Spy(monkeypatch, checkpoint)
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "7", "--ckpt_path", "last") == 0
    monkeypatch.undo()
    assert sorted(spy.opened) == sorted(expected), f"opened {spy.opened}"
    assert {name: spy.digests.count(digest) for name, digest in expected.items()} == dict.fromkeys(expected, 1)


def test_a_deeply_nested_manifest_is_a_checkpoint_error_not_a_crash(tmp_path: Path) -> None:
    from lit_psion.core.checkpoint import verify_checkpoint
    from lit_psion.core.errors import CheckpointError

    checkpoint = tmp_path / "step-000003"
    checkpoint.mkdir()
    for payload in ("[" * 100000 + "]" * 100000, '{"files": ' + "[" * 100000 + "]" * 100000 + "}"):
        (checkpoint / "manifest.json").write_text(payload)
        with pytest.raises(CheckpointError):
            verify_checkpoint(checkpoint)


def test_a_failed_checkpoint_write_says_the_way_on_for_where_it_was_written(layout: RunLayout, tmp_path: Path) -> None:
    """It named a previous, pointed-to checkpoint and --ckpt_path last whatever was written: at a run's first
    checkpoint (none to continue from), and for a consolidated copy or a window's revision (no fit to resume)."""
    from lit_psion.core.pointer import after_a_failed_write

    step = layout.checkpoints / "step-000003"
    assert after_a_failed_write(step, "fix it").startswith("the run has no earlier checkpoint to continue from")
    layout.checkpoints.mkdir()
    layout.pointer.write_text("{}")
    said = after_a_failed_write(step, "fix it")
    assert said == f"the previous checkpoint is still the pointed-to one (fix it, then {layout.resume_flags})"
    assert "--trainer.default_root_dir" in said
    for elsewhere in (layout.consolidated / "step-000003", tmp_path / "revisions" / "r-0001"):
        assert after_a_failed_write(elsewhere, "fix it") == "nothing was written in its place (fix it, then run the " \
                                                            "command again)"  # fmt: skip
