"""``python -m lit_psion doctor RUN_DIR``: one verdict per artifact, and the first failure's exit code."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import RunLayout, read_json, sha256_file
from lit_psion.core.lock import RunLock
from lit_psion.core.manifest import DataManifest
from lit_psion.core.run import read_latest, write_latest
from lit_psion.datamodules.base import default_cache_dir
from tests.helpers import fit


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    root = tmp_path_factory.mktemp("doctor")
    with pytest.MonkeyPatch.context() as patch:  # the session's cache, as the function-scoped tests see it
        patch.setenv("LIT_PSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert fit("--trainer.default_root_dir", str(root)) == 0
    return RunLayout(root, read_latest(root))


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def token_cache(layout: RunLayout) -> Path:
    manifest = DataManifest.from_json_dict(read_json(layout.data_manifest))
    return default_cache_dir(None) / "corpora" / manifest.inputs_digest()


def swap_weights_and_rewrite_the_manifest(run: RunLayout) -> None:
    """Step 6's weights in step 9, with step 9's manifest rewritten to match: every file verifies on its own."""
    weights = run.checkpoint(6) / "model.safetensors"
    shutil.copyfile(weights, run.checkpoint(9) / "model.safetensors")
    manifest = read_json(run.checkpoint(9) / "manifest.json")
    manifest["files"]["model.safetensors"] = {"sha256": sha256_file(weights), "bytes": weights.stat().st_size}
    (run.checkpoint(9) / "manifest.json").write_text(json.dumps(manifest))


def edit_block_size(run: RunLayout) -> None:
    manifest = read_json(run.data_manifest)
    manifest["block_size"] += 1  # its "digest" field left as it was
    run.data_manifest.write_text(json.dumps(manifest))


def swap_two_tokens(run: RunLayout) -> None:
    tokenizer = read_json(run.tokenizer)
    vocab = tokenizer["model"]["vocab"]
    first, second = list(vocab)[:2]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    run.tokenizer.write_text(json.dumps(tokenizer))


HARMS = [
    ("another checkpoint's weights under a rewritten manifest", swap_weights_and_rewrite_the_manifest,
     "FAIL checkpoints/step-000009", 4),
    ("a flipped byte in a checkpoint", lambda run: flip(run.checkpoint(9) / "model.safetensors"),
     "FAIL checkpoints/step-000009", 4),
    ("an edited config.yaml", lambda run: run.config.write_text(run.config.read_text() + "# edited\n"),
     "FAIL config.yaml", 3),
    ("an edited data manifest",
     lambda run: run.data_manifest.write_text(run.data_manifest.read_text().replace('"digest": "', '"digest": "0')),
     "FAIL data_manifest.json", 3),
    ("a data manifest edited under its own digest field", edit_block_size, "FAIL data_manifest.json", 3),
    ("a tokenizer.json with two entries swapped", swap_two_tokens, "FAIL tokenizer.json", 3),
    ("a run.json that is not JSON", lambda run: run.run_file.write_text("{"), "FAIL run.json", 5),
    # deleted: each used to drop out of the verdicts ("all ... verified", exit 0)
    ("a deleted config.yaml", lambda run: run.config.unlink(), "FAIL config.yaml: missing", 3),
    ("config.yaml replaced by a directory", lambda run: (run.config.unlink(), run.config.mkdir()),
     "FAIL config.yaml: missing", 3),
    ("a deleted data manifest", lambda run: run.data_manifest.unlink(), "FAIL data_manifest.json: missing", 3),
    ("a deleted tokenizer", lambda run: run.tokenizer.unlink(), "FAIL tokenizer.json: missing", 3),
    ("every checkpoint deleted", lambda run: shutil.rmtree(run.checkpoints),
     "FAIL checkpoints/step-000012: missing: the newest durable checkpoint the receipts record is gone", 4),
    ("the newest checkpoint deleted", lambda run: shutil.rmtree(run.checkpoint(12)),
     "FAIL checkpoints/step-000012: missing", 4),
    ("a deleted pointer", lambda run: run.pointer.unlink(),
     "FAIL pointer.json: missing, though the receipts record a durable checkpoint; a resume falls back to", 4),
    ("the pointer moved back to a good older checkpoint", lambda run: move_pointer(run, 6),
     "FAIL pointer.json: names step-000006, which a resume does not use (the receipts record a newer durable "
     "checkpoint, step 12)", 4),
    ("a pointer that is a symlink to a copy outside the run", lambda run: symlink_pointer(run),
     "FAIL pointer.json: checkpoint pointer", 4),
    ("a pointer naming a checkpoint that is not there", lambda run: move_pointer(run, 50),
     "FAIL pointer.json", 4),  # it blamed run.json (exit 5), which was intact
    ("a pointer that is not JSON", lambda run: run.pointer.write_text("{"), "FAIL pointer.json", 4),
    # run.json edited where the chain or the directory says otherwise: it used to read "ok"
    ("run.json's step edited", lambda run: edit_record(run, global_step=999),
     "FAIL run.json: does not match the run: it says step 999, but the seal says step 12", 5),
    ("a sealed run.json said paused", lambda run: edit_record(run, status="paused"),
     "FAIL run.json: does not match the run: it says paused, but the chain is sealed", 5),
    ("run.json's model signature edited", lambda run: edit_record(run, model_signature="0" * 64),
     "FAIL run.json: does not match the run: its model_signature is not the one", 5),
    ("run.json's step behind its checkpoint", lambda run: edit_record(run, global_step=3),
     "but the pointed-to checkpoint is step 12", 5),
]


def move_pointer(run: RunLayout, step: int) -> None:
    pointer = read_json(run.pointer)
    manifest = run.checkpoint(step) / "manifest.json"
    pointer.update(checkpoint=f"step-{step:06d}", step=step,
                   manifest_sha256=sha256_file(manifest) if manifest.is_file() else "0" * 64)  # fmt: skip
    run.pointer.write_text(json.dumps(pointer))


def symlink_pointer(run: RunLayout) -> None:
    outside = run.root.parent / "pointer-elsewhere.json"
    shutil.copy(run.pointer, outside)
    run.pointer.unlink()
    run.pointer.symlink_to(outside)


def edit_record(run: RunLayout, **fields: object) -> None:
    record = read_json(run.run_file)
    record.update(fields)
    run.run_file.write_text(json.dumps(record))


@pytest.mark.parametrize(("name", "harm", "line", "code"), HARMS, ids=[h[0] for h in HARMS])
def test_doctor_names_the_failing_artifact_and_exits_with_its_class(
    completed: RunLayout, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, harm: Callable, line: str,
    code: int,
) -> None:
    copy = RunLayout(tmp_path, completed.run_id)
    shutil.copytree(completed.run_dir, copy.run_dir)
    harm(copy)
    capsys.readouterr()
    assert main(["doctor", str(copy.run_dir)]) == code
    out = capsys.readouterr().out
    assert line in out
    assert sum(verdict.startswith("FAIL") for verdict in out.splitlines()) >= 1


def test_a_healthy_run_passes_every_verdict(completed: RunLayout, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["doctor", str(completed.run_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    artifacts = [line.split(":")[0].split(maxsplit=1)[1] for line in out if line.startswith("ok")]
    assert {"run.json", "receipts.jsonl", "pointer.json", "config.yaml", "data_manifest.json", "token cache"} <= set(
        artifacts)  # fmt: skip
    assert sum(name.startswith("checkpoints/") for name in artifacts) == 3
    assert out[-1] == f"all {len(artifacts)} artifacts verified"


def test_a_tampered_token_cache_fails_the_doctor(completed: RunLayout, capsys: pytest.CaptureFixture) -> None:
    cache = token_cache(completed)
    saved = cache.with_name(cache.name + ".saved")
    shutil.copytree(cache, saved)
    try:
        record = cache / "token_digests.json"
        record.write_text(record.read_text().replace('"train": "', '"train": "0'))
        capsys.readouterr()
        assert main(["doctor", str(completed.run_dir)]) == 3
        assert "FAIL token cache" in capsys.readouterr().out
    finally:
        shutil.rmtree(cache)
        saved.rename(cache)


def test_the_token_cache_is_looked_for_where_the_run_keeps_it(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A run whose config names its own ``cache_dir``: doctor looked under ``$LIT_PSION_CACHE`` and called the cache
    absent, so a tampered one passed."""
    own = tmp_path / "own-cache"
    assert fit("--trainer.default_root_dir", str(tmp_path / "runs"), "--data.init_args.cache_dir", str(own)) == 0
    run = RunLayout(tmp_path / "runs", read_latest(tmp_path / "runs"))
    monkeypatch.setenv("LIT_PSION_CACHE", str(tmp_path / "elsewhere"))
    capsys.readouterr()
    assert main(["doctor", str(run.run_dir)]) == 0
    assert f"ok   token cache: matches the manifest's token digests ('{own}" in capsys.readouterr().out
    (record,) = own.glob("corpora/*/token_digests.json")
    record.write_text(record.read_text().replace('"train": "', '"train": "0'))
    assert main(["doctor", str(run.run_dir)]) == 3
    assert "FAIL token cache" in capsys.readouterr().out


def test_doctor_refuses_a_directory_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["doctor", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["doctor"], ["receipts", "verify"], ["compare"]])
@pytest.mark.parametrize("inside", ["run.json", "checkpoints", "dashboard/index.html"])
def test_a_path_inside_a_run_is_pointed_to_its_run(completed: RunLayout, capsys: pytest.CaptureFixture,
                                                   command: list[str], inside: str) -> None:  # fmt: skip
    """Given RUN/run.json (or another path in a run), the refusal named run.json as what was missing."""
    capsys.readouterr()
    assert main([*command, str(completed.run_dir / inside)]) == 2
    err = capsys.readouterr().err
    assert f"is inside run directory {str(completed.run_dir)!r}; give that run directory" in err
    assert "no run.json" not in err


@pytest.mark.parametrize("command", [["doctor"], ["receipts", "verify"], ["ckpt", "verify"]])
@pytest.mark.parametrize("lost", ["deleted", "a directory"])
def test_a_run_that_lost_its_run_json_is_evidence_not_a_wrong_argument(
    completed: RunLayout, tmp_path: Path, capsys: pytest.CaptureFixture, command: list[str], lost: str
) -> None:
    """Exit 5, as --ckpt_path last says of it; it was exit 2 'not a run directory'. A run.json that is a directory
    was called missing."""
    copy = RunLayout(tmp_path, completed.run_id)
    shutil.copytree(completed.run_dir, copy.run_dir)
    copy.run_file.unlink()
    if lost == "a directory":
        copy.run_file.mkdir()
    capsys.readouterr()
    assert main([*command, str(copy.run_dir)]) == 5
    said = "is not a file" if lost == "a directory" else "is missing"
    assert f"has receipts or checkpoints but no run.json ('{copy.run_file}' {said})" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["doctor"], ["receipts", "verify"], ["ckpt", "verify"], ["ckpt", "consolidate"]])
def test_no_check_judges_a_run_while_it_is_being_written(completed: RunLayout, capsys: pytest.CaptureFixture,
                                                         command: list[str]) -> None:  # fmt: skip
    """receipts verify and ckpt verify on a live run said now and then that it was truncated (its chain ran past
    the anchors just read) or that its pointer named a checkpoint a resume would not use: tampering, falsely."""
    with RunLock(completed.run_dir, purpose="fit"):
        capsys.readouterr()
        assert main([*command, str(completed.run_dir)]) == 8
        assert f"is being written by pid {os.getpid()}" in (err := capsys.readouterr().err)
        assert f"run {' '.join(command)} once that fit has finished" in err
    if command != ["ckpt", "consolidate"]:  # (a single-file checkpoint has nothing to consolidate)
        assert main([*command, str(completed.run_dir)]) == 0


def test_a_run_on_generated_data_has_its_data_manifest_checked_not_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The graph core's data manifest is its generator's record, not a corpus's: doctor digests it as it stands
    (it used to report it unreadable, KeyError 'sources', and fail every such run)."""
    small = ("--data.init_args.n_bodies", "6", "--model.init_args.config.n_nodes", "6", "--data.init_args.steps", "60",
             "--data.init_args.n_train", "16", "--data.init_args.window", "8", "--data.init_args.n_test", "4",
             "--trainer.max_steps", "4", "--trainer.val_check_interval", "2")  # fmt: skip
    assert fit(*small, "--trainer.default_root_dir", str(tmp_path), config="configs/graph_core_oscillators.yaml") == 0
    run = RunLayout(tmp_path, read_latest(tmp_path))
    capsys.readouterr()
    assert main(["doctor", str(run.run_dir)]) == 0
    assert "ok   data_manifest.json: data manifest content digest matches" in capsys.readouterr().out
    manifest = read_json(run.data_manifest)
    run.data_manifest.write_text(json.dumps({**manifest, "n_train": 17}))  # another generator record
    assert main(["doctor", str(run.run_dir)]) == 3
    assert "FAIL data_manifest.json: data manifest content digest differs" in capsys.readouterr().out


def test_a_renamed_run_directory_is_named_as_such(completed: RunLayout, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    renamed = tmp_path / "my-run"
    shutil.copytree(completed.run_dir, renamed)
    capsys.readouterr()
    assert main(["doctor", str(renamed)]) == 5
    assert f"it names run {completed.run_id!r}, but its directory is 'my-run'" in capsys.readouterr().out


def test_a_kill_between_the_seal_and_run_json_is_not_a_forgery(completed: RunLayout, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    copy = RunLayout(tmp_path, completed.run_id)
    shutil.copytree(completed.run_dir, copy.run_dir)
    lines = copy.receipts.read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines[-2:]] == ["training_run", "chain_seal"]
    edit_record(copy, status="active", receipts_head=json.loads(lines[-3])["digest"])
    capsys.readouterr()
    main(["doctor", str(copy.run_dir)])
    assert "ok   run.json: active" in capsys.readouterr().out


TRANSACTIONAL = ("--config", "configs/overlays/transactional.yaml", "--trainer.strategy.policy.restore_after", "2")


@pytest.fixture(scope="module")
def skip_listed(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    """A transactional run whose poisoned steps 5 and 6 were rolled back, restored and skip-listed."""
    root = tmp_path_factory.mktemp("skip_listed")
    poison = root.parent / f"{root.name}-poison.json"
    poison.write_text(json.dumps({"trainer": {"callbacks": [{
        "class_path": "tests.strategies.regression.PoisonGradients", "init_args": {"steps": [5, 6]}}]}}))  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIT_PSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert fit(*TRANSACTIONAL, "--config", str(poison), "--trainer.default_root_dir", str(root),
                   "--trainer.max_steps", "8") == 0  # fmt: skip
    layout = RunLayout(root, read_latest(root))
    assert sorted(entry["step"] for entry in read_json(layout.skip_list)["batches"]) == [5, 6]
    return layout


def _list_also(step: int) -> Callable[[Path], None]:
    def harm(path: Path) -> None:
        listed = read_json(path)
        listed["batches"].append({**listed["batches"][0], "key": format(step, "064x"), "step": step})
        path.write_text(json.dumps(listed))

    return harm


def _swap_key(step: int) -> Callable[[Path], None]:
    def harm(path: Path) -> None:
        listed = read_json(path)
        listed["batches"] = [{**entry, "key": "f" * 64} if entry["step"] == step else entry
                             for entry in listed["batches"]]  # fmt: skip
        path.write_text(json.dumps(listed))

    return harm


def _drop(step: int) -> Callable[[Path], None]:
    def harm(path: Path) -> None:
        listed = read_json(path)
        listed["batches"] = [entry for entry in listed["batches"] if entry["step"] != step]
        path.write_text(json.dumps(listed))

    return harm


def _symlinked(path: Path) -> None:
    outside = path.parent.parent / "elsewhere.json"
    shutil.copy(path, outside)
    path.unlink()
    path.symlink_to(outside)


SKIP_LIST_HARMS = [
    ("a batch of a committed step listed by hand", _list_also(2), "lists batches at step(s) 2 that the receipts"),
    ("the batch of a rolled-back step swapped for another", _swap_key(5), "lists batches at step(s) 5 that the"),
    ("another batch added at a rolled-back step", _list_also(5), "lists batches at step(s) 5 that the"),
    ("garbled", lambda path: path.write_text("{not json"), "is not a skip list"),
    ("no batches field", lambda path: path.write_text('{"version": 1}'), "is not a skip list"),
    ("a symlink", _symlinked, "is not a skip list"),
    ("deleted", lambda path: path.unlink(), "lacks the batches of step(s) 5, 6 that the receipts record"),  # they
    ("a restored streak's entry dropped", _drop(6), "lacks the batches of step(s) 6 that"),  # trained again, unseen
]


@pytest.mark.parametrize(("name", "harm", "line"), SKIP_LIST_HARMS, ids=[h[0] for h in SKIP_LIST_HARMS])
def test_a_skip_list_the_receipts_do_not_bear_out_fails_the_doctor(
    skip_listed: RunLayout, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, harm: Callable, line: str
) -> None:
    """The skip list decides which batches a resumed run leaves out: each must be a rollback the chain records."""
    copy = RunLayout(tmp_path, skip_listed.run_id)
    shutil.copytree(skip_listed.run_dir, copy.run_dir)
    assert main(["doctor", str(copy.run_dir)]) == 0
    assert "ok   skip_list.json" in capsys.readouterr().out
    harm(copy.skip_list)
    assert main(["doctor", str(copy.run_dir)]) == 5
    out = capsys.readouterr().out
    assert "FAIL skip_list.json" in out and line in out


def test_a_skip_list_written_just_before_its_receipt_is_not_a_forgery(
    skip_listed: RunLayout, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A kill between the list's write and its step's receipt leaves an entry past the chain's last transaction:
    not a forgery, but not trusted either. A resume trains that step again (a failing streak lists it again), so
    it drops the entry; a batch listed by hand far ahead is dropped the same way, never skipped."""
    copy = RunLayout(tmp_path, skip_listed.run_id)
    shutil.copytree(skip_listed.run_dir, copy.run_dir)
    write_latest(tmp_path, copy.run_id)
    _list_also(9)(copy.skip_list)
    _list_also(10**9)(copy.skip_list)
    capsys.readouterr()
    assert main(["doctor", str(copy.run_dir)]) == 0
    assert "2 listed past the chain's last transaction, which a resume drops" in capsys.readouterr().out
    assert fit(*TRANSACTIONAL, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "12",
               "--ckpt_path", "last") == 0  # fmt: skip
    assert sorted(entry["step"] for entry in read_json(copy.skip_list)["batches"]) == [5, 6]
    assert main(["doctor", str(copy.run_dir)]) == 0


RESUME_HARMS = {  # harm: what the refusal says
    "a committed step's batch listed by hand": (_list_also(2), "lists batches at step(s) 2 that the receipts do not "
                                                               "record rolling back"),  # it would be left out
    "deleted": (lambda path: path.unlink(), "lacks the batches of step(s) 5, 6 that the receipts record "
                                            "skip-listing"),  # the skip-listed batches would train again, unseen
}  # fmt: skip


@pytest.mark.parametrize("harm", RESUME_HARMS)
def test_a_resume_refuses_a_skip_list_the_receipts_do_not_bear_out(
    skip_listed: RunLayout, tmp_path: Path, capsys: pytest.CaptureFixture, harm: str
) -> None:
    """What doctor FAILs, a resume must not act on."""
    copy = RunLayout(tmp_path, skip_listed.run_id)
    shutil.copytree(skip_listed.run_dir, copy.run_dir)
    write_latest(tmp_path, copy.run_id)
    damage, says = RESUME_HARMS[harm]
    damage(copy.skip_list)
    before = sorted((path.name, path.read_bytes()) for path in copy.run_dir.iterdir() if path.is_file())
    capsys.readouterr()
    resume = (*TRANSACTIONAL, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "12")
    assert fit(*resume, "--ckpt_path", "last") == 5
    assert says in capsys.readouterr().err
    assert sorted((path.name, path.read_bytes()) for path in copy.run_dir.iterdir() if path.is_file()) == before
    shutil.copy(skip_listed.skip_list, copy.skip_list)  # the list as the run wrote it: the resume goes on
    assert fit(*resume, "--ckpt_path", "last") == 0


def test_a_run_started_from_another_runs_checkpoint_mid_streak_lists_only_its_own_rollbacks(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A checkpoint written mid-streak carries the streak; a new run started from it (--ckpt_path DIR) must not
    complete that streak with the first run's steps, whose rollback receipts are in the first run's chain: its
    skip list would not be borne out by its own receipts, and its next resume would be refused."""

    def poison(steps: list[int]) -> str:
        path = tmp_path / f"poison-{'-'.join(map(str, steps))}.json"
        callback = {"class_path": "tests.strategies.regression.PoisonGradients", "init_args": {"steps": steps}}
        path.write_text(json.dumps({"trainer": {"callbacks": [callback]}}))
        return str(path)

    first, second = tmp_path / "first", tmp_path / "second"
    assert fit(*TRANSACTIONAL[:2], "--config", poison([5, 6]), "--trainer.default_root_dir", str(first),
               "--trainer.max_steps", "6") == 0  # fmt: skip
    start = first / read_latest(first) / "checkpoints" / "step-000006"
    assert [entry["step"] for entry in torch_load_streak(start)] == [5, 6], "the checkpoint carries the streak"
    assert fit(*TRANSACTIONAL[:2], "--config", poison([7]), "--trainer.default_root_dir", str(second),
               "--trainer.strategy.policy.restore_after", "3", "--ckpt_path", str(start)) == 0  # fmt: skip
    run = RunLayout(second, read_latest(second))
    assert not run.skip_list.exists(), "one rollback of its own: no streak long enough to restore and list"
    capsys.readouterr()
    assert main(["doctor", str(run.run_dir)]) == 0


def torch_load_streak(checkpoint: Path) -> list[dict]:
    from lit_psion.checkpoint_io import ManifestCheckpointIO

    state = ManifestCheckpointIO().load_checkpoint(checkpoint)
    return state["transactional"]["ranks"][0]["streak"]


def test_a_relative_cache_dir_says_where_it_was_looked_up(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A fit's relative ``cache_dir`` lives under the directory the fit ran in; doctor, run elsewhere, called the
    cache absent without saying where it had looked, so a tampered cache passed unremarked."""
    workdir, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    workdir.mkdir(), elsewhere.mkdir()
    paths = ["--config", str(Path("fixtures/tiny.yaml").resolve()), "--data.init_args.files",
             str(Path("fixtures/tiny_corpus.txt").resolve())]  # fmt: skip
    monkeypatch.chdir(workdir)
    assert main(["fit", *paths, "--data.init_args.cache_dir", "cache", "--trainer.default_root_dir",
                 str(tmp_path / "runs"), "--trainer.max_steps", "1"]) == 0  # fmt: skip
    run_dir = tmp_path / "runs" / read_latest(tmp_path / "runs")
    for cwd, verdict in ((workdir, "ok   token cache: matches"), (elsewhere, "ok   token cache: absent from 'cache/")):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        assert main(["doctor", str(run_dir)]) == 0
        out = capsys.readouterr().out
        assert verdict in out, out
        assert (f"the run's data.cache_dir 'cache' is relative, looked up from {str(cwd)!r}: run doctor from the "
                "directory the fit ran in") in out, out


def test_doctor_holds_the_text_a_run_trained_on_to_its_manifest_as_a_resume_would(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """doctor said "all verified" of a run whose corpus file had been edited, which every resume and evaluation of it
    then refused (exit 3). Moved away, the text is said as not found, not failed: the run is as sound as it was."""
    corpus = tmp_path / "corpus.txt"
    shutil.copy("fixtures/tiny_corpus.txt", corpus)
    monkeypatch.chdir(tmp_path)  # a relative path, read from where doctor runs, as a resume started there reads it
    assert fit("--data.files", "corpus.txt", "--trainer.default_root_dir", str(tmp_path / "runs"),
               "--trainer.max_steps", "2", config=str(Path(__file__).parents[2] / "fixtures" / "tiny.yaml")) == 0
    run = tmp_path / "runs" / read_latest(tmp_path / "runs")
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 0
    assert "ok   data sources: 1 of 1 match the data manifest (relative paths looked up from" in capsys.readouterr().out
    corpus.write_text(corpus.read_text() + "one more line\n")
    assert main(["doctor", str(run)]) == 3
    assert "FAIL data sources: 'corpus.txt' is not the text the run trained on" in capsys.readouterr().out
    corpus.unlink()
    assert main(["doctor", str(run)]) == 0
    assert "data sources: 0 of 1 match the data manifest; not found: 'corpus.txt'" in capsys.readouterr().out


def test_a_damaged_checkpoint_a_resume_skips_is_named_as_one_to_delete(completed: RunLayout, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """After a resume fell back past a corrupt older checkpoint, doctor said "restore it from a backup" for good,
    with no word that nothing needs it; without a backup there was no way back to all-ok."""
    copy = RunLayout(tmp_path, completed.run_id)
    shutil.copytree(completed.run_dir, copy.run_dir)
    steps = sorted(path.name for path in copy.checkpoint_dirs())
    assert len(steps) >= 2
    flip(copy.checkpoints / steps[0] / "model.safetensors")
    capsys.readouterr()
    assert main(["doctor", str(copy.run_dir)]) == 4
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].endswith(f"(a resume skips it for {steps[-1]}: delete it if no backup "
                                                   "holds it)"), failed  # fmt: skip
    shutil.rmtree(copy.checkpoints / steps[0])
    assert main(["doctor", str(copy.run_dir)]) == 0
