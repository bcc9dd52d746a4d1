"""Where adapter export and merge write: a new or empty directory or their own earlier output, checked first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from lit_psion.cli import main
from lit_psion.core import read_json
from tests.models.test_adapter import base, exported, tuned  # noqa: F401  (fixtures: a base, a tuned run, its export)


def test_an_output_directory_that_holds_something_else_is_refused_before_anything_is_written(
    base: Path, tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811  (the fixtures above)
) -> None:
    """A merge into the adapter export itself wrote model.safetensors and merge.json there, then failed on the log
    (exit 5), and `generate` sampled from the half-written merge; an export into a runs root was taken, and
    `receipts verify` then told the user to delete the root. A renamed export takes a second export."""
    from lit_psion.cli import main

    export = tmp_path / "adapter"
    assert main(["adapter", "export", str(tuned), "--out", str(export)]) == 0
    written = {p.name: p.read_bytes() for p in export.iterdir() if p.name != ".lock"}
    capsys.readouterr()
    assert main(["adapter", "merge", str(export), "--base", str(base), "--out", str(export)]) == 2
    assert "holds adapter.json, adapter.safetensors, so it is not a merge directory" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in export.iterdir() if p.name != ".lock"} == written
    root_files = sorted(p.name for p in tuned.parent.iterdir())
    assert main(["adapter", "export", str(tuned), "--out", str(tuned.parent)]) == 2  # the runs root
    assert "so it is not an adapter export directory" in capsys.readouterr().err
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("mine")
    assert main(["adapter", "merge", str(export), "--base", str(base), "--out", str(folder)]) == 2
    # Refused before its lock: neither the root nor the user's folder is left a lock file it never had.
    assert sorted(p.name for p in tuned.parent.iterdir()) == root_files and [p.name for p in folder.iterdir()] == [
        "a.txt"]  # fmt: skip
    (tmp_path / "afile").write_text("x")
    assert main(["adapter", "export", str(tuned), "--out", str(tmp_path / "afile")]) == 2
    renamed = tmp_path / "renamed"
    export.rename(renamed)
    assert main(["adapter", "export", str(tuned), "--out", str(renamed)]) == 0  # its log keeps its first run id
    assert main(["adapter", "merge", str(renamed), "--base", str(base), "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    for directory, receipts in ((renamed, 2), (tmp_path / "m", 1)):
        assert main(["receipts", "verify", str(directory)]) == 0
        assert f"ok: {receipts} receipts verified" in capsys.readouterr().out
    log = renamed / "receipts.jsonl"
    log.write_text(log.read_text().replace('"export"', '"exporT"', 1))
    assert main(["receipts", "verify", str(renamed)]) == 5


def test_a_fine_tune_on_a_base_run_still_being_written_says_what_it_risks(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811  (the fixture above)
) -> None:
    """A fine-tune on a base run whose fit was still running was taken without a word; that run's retention then
    deleted the checkpoint the adapter trained on, and merging or resuming the adapter had nothing to go on."""
    import shutil

    from lit_psion.core.lock import RunLock
    from tests.helpers import fit
    from tests.models.test_adapter import adapter_args

    live = tmp_path / "base" / base.name
    shutil.copytree(base, live)
    with RunLock(live, purpose="fit"):
        capsys.readouterr()
        assert fit(*adapter_args(live, tmp_path / "ft", "--trainer.max_steps", "2")) == 0
    err = capsys.readouterr().err
    assert f"warning: base run {base.name} is being written by" in err and "uses its step-000012" in err
    assert fit(*adapter_args(base, tmp_path / "ft2", "--trainer.max_steps", "2")) == 0  # a finished base: no word
    assert "base run" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["export", "merge"])
def test_a_second_writer_of_an_output_directory_is_refused_while_the_first_holds_it(
    command: str, base: Path, tuned: Path, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811
) -> None:
    """Five merges at once into one --out all wrote (four exit 0, one exit 5): its log held three receipts of seq 1 on
    the same prev_digest, `receipts verify` failed (exit 5), and every later merge into it was refused (exit 5)."""
    from lit_psion.cli import main
    from lit_psion.core.lock import RunLock

    out = tmp_path / "out"
    argv = ["adapter", "export", str(tuned), "--out", str(out)] if command == "export" else \
        ["adapter", "merge", str(exported), "--base", str(base), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
    with RunLock(out, purpose="holding it for a test"):
        capsys.readouterr()
        assert main(argv) == 8
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is locked by pid" in err[0] and "(holding it for a test)" in err[0], err
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before
        assert main(["receipts", "verify", str(out)]) == 8  # its log grows under a check
    assert main(argv) == 0  # the lock went with its holder: the log goes on
    capsys.readouterr()
    assert main(["receipts", "verify", str(out)]) == 0
    assert "ok: 2 receipts verified" in capsys.readouterr().out


def test_a_refused_merge_leaves_none_of_the_directories_it_made(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811  (the fixture above)
) -> None:
    """--out is made and locked before the merge reads anything: a refusal takes back what it made, and no more."""
    from lit_psion.cli import main

    (tmp_path / "kept").mkdir()
    out = tmp_path / "kept" / "a" / "b" / "merged"
    assert main(["adapter", "merge", str(exported), "--base", str(tmp_path / "nowhere"), "--out", str(out)]) == 4
    assert "does not exist" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())


def test_an_export_or_merge_being_written_is_not_read(
    base: Path, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811  (the fixtures above)
) -> None:
    """Writers take the output's lock, but `adapter inspect`, a merge of the export and `generate` read it without
    asking: between its two files an export read as edited (exit 4), a merge as not the one merge.json records."""
    import shutil

    from lit_psion.cli import main
    from lit_psion.core.lock import RunLock

    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    shutil.copytree(exported, adapter)
    assert main(["adapter", "merge", str(adapter), "--base", str(base), "--out", str(merged)]) == 0
    tokenizer = str(base / "tokenizer.json")
    reads = {adapter: [["adapter", "inspect", str(adapter)],
                       ["adapter", "merge", str(adapter), "--base", str(base), "--out", str(tmp_path / "m2")]],
             merged: [["generate", str(merged), "--tokenizer", tokenizer, "--tokens", "2"]]}  # fmt: skip
    for directory, commands in reads.items():
        with RunLock(directory, purpose=f"adapter merge into {directory}"):
            for argv in commands:
                capsys.readouterr()
                assert main(argv) == 8, argv
                (line,) = capsys.readouterr().err.strip().splitlines()
                assert "is being written by" in line and "read it once that has finished" in line, line
        for argv in commands:
            assert main(argv) == 0, argv  # released: read as before


def test_an_export_or_merge_given_to_a_runs_command_names_adapter_inspect(
    base: Path, tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811  (the fixtures above)
) -> None:
    """`doctor` and `ckpt verify` read an export or merge (receipts, no run.json) as a fit stopped as it started and
    said to delete it; `receipts verify` said "ok: 0 receipts verified" of one whose log was emptied."""
    from lit_psion.cli import main

    assert main(["adapter", "export", str(tuned), "--out", str(tmp_path / "adapter")]) == 0
    assert main(["adapter", "merge", str(tmp_path / "adapter"), "--base", str(base), "--out", str(tmp_path / "m")]) == 0
    for output in (tmp_path / "adapter", tmp_path / "m"):
        for command in (["doctor", str(output)], ["ckpt", "verify", str(output)]):
            capsys.readouterr()
            assert main(command) == 2, command
            err = capsys.readouterr().err
            assert f"is an adapter export's or merge's output; `python -m lit_psion adapter inspect {output}`" in err
            assert "delete" not in err
        assert main(["receipts", "verify", str(output)]) == 0
        log = output / "receipts.jsonl"
        kept = log.read_bytes()
        log.write_bytes(b"")
        capsys.readouterr()
        assert main(["receipts", "verify", str(output)]) == 5
        assert "holds no receipt, but" in capsys.readouterr().err
        log.write_bytes(kept)
    (tmp_path / "m" / "merge.json").rename(tmp_path / "merge.json")
    (tmp_path / "m" / "merge.json").mkdir()  # a directory in its place: still named as a merge's output
    assert main(["doctor", str(tmp_path / "m")]) == 2
    assert "is an adapter export's or merge's output" in capsys.readouterr().err


def _unexported(run: Path, into: Path) -> Path:
    """A copy of adapter run ``run`` as it was before its adapter was exported."""
    copy = into / "unexported" / run.name
    if not copy.exists():
        shutil.copytree(run, copy, ignore=lambda directory, names: ["adapter"] if Path(directory) == run else [])
    return copy


@pytest.mark.parametrize(("given", "says"), [
    (lambda e, m, tmp, run: e / "adapter.json", "is the adapter's metadata file; give the adapter's "
                                                              "directory, '{exported}'"),
    (lambda e, m, tmp, run: e / "adapter.safetensors", "is a file, not a directory; give the "
                                                                     "adapter's directory, '{exported}'"),
    (lambda e, m, tmp, run: tmp / "nowhere", "does not exist; give the directory `adapter export` wrote"),
    (lambda e, m, tmp, run: _unexported(run, tmp) / "adapter", "does not exist: run {run} has exported no adapter; "
     "export one first (python -m lit_psion adapter export "),
    (lambda e, m, tmp, run: m, "is a merged model (adapter merge --out), not an adapter"),
    (lambda e, m, tmp, run: tmp, "holds no adapter.json; export an adapter from an adapter run first"),
], ids=["its metadata file", "its tensor file", "missing", "a run's before any export", "a merge's output",
        "an empty directory"])  # fmt: skip
def test_a_path_that_is_no_adapter_is_named_for_what_it_is(
    base: Path, exported: Path, tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture, given: Any,  # noqa: F811
    says: str,
) -> None:
    """`adapter inspect RUN/adapter/adapter.json`, a missing path and a merge's output were all told "holds no
    adapter.json; export an adapter first", which fixes none of them."""
    from lit_psion.cli import main

    merged, empty, out = tmp_path / "merged", tmp_path / "empty", tmp_path / "m2"
    empty.mkdir()
    assert main(["adapter", "merge", str(exported), "--base", str(base), "--out", str(merged)]) == 0
    path = given(exported, merged, empty, tuned)
    for argv in (["adapter", "inspect", str(path)], ["adapter", "merge", str(path), "--base", str(base), "--out",
                                                      str(out)]):  # fmt: skip
        capsys.readouterr()
        assert main(argv) == 2, argv
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert f"{str(path)!r} {says.format(exported=exported, run=tuned.name)}" in line, line
    assert not out.exists()


def test_a_merge_whose_files_were_copied_from_another_merge_is_refused_by_generate(
    base: Path, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811  (the fixtures above)
) -> None:
    """m2's model.safetensors and merge.json copied into m1 agree with each other: generate sampled from m2's
    weights, though m1's receipt records another merged model of another adapter."""
    import shutil

    from lit_psion.cli import main
    from lit_psion.core.run import read_latest
    from tests.helpers import fit
    from tests.models.test_adapter import adapter_args

    other = tmp_path / "other"
    assert fit(*adapter_args(base, other, "--seed_everything", "99")) == 0
    assert main(["adapter", "export", str(other / read_latest(other)), "--out", str(tmp_path / "a2")]) == 0
    for adapter, out in ((exported, "m1"), (tmp_path / "a2", "m2")):
        assert main(["adapter", "merge", str(adapter), "--base", str(base), "--out", str(tmp_path / out)]) == 0
    generate = ["generate", str(tmp_path / "m1"), "--tokenizer", str(base / "tokenizer.json"), "--tokens", "2"]
    assert main(generate) == 0
    for name in ("model.safetensors", "merge.json"):
        shutil.copy(tmp_path / "m2" / name, tmp_path / "m1" / name)
    capsys.readouterr()
    assert main(generate) == 5
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "the files were copied in from another merge" in line, line
    log = tmp_path / "m1" / "receipts.jsonl"
    kept = log.read_text()
    theirs = json.loads((tmp_path / "m2" / "merge.json").read_text())
    ours = json.loads(kept.splitlines()[-1])["body"]
    log.write_text(kept.replace(ours["output_digest"], theirs["model_sha256"]).replace(
        ours["adapter_digest"], theirs["adapter_sha256"]))  # the receipt edited to name the copied files
    assert main(generate) == 5
    assert "its receipt log does not verify" in capsys.readouterr().err
    log.unlink()
    assert main(generate) == 5
    assert "its receipt log receipts.jsonl is missing" in capsys.readouterr().err


def test_an_output_written_over_another_adapters_says_what_it_replaces(
    base: Path, tuned: Path, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811
) -> None:
    """A merge (or an export) into the --out of another adapter's replaced it without a word."""
    from lit_psion.cli import main
    from lit_psion.core.run import read_latest
    from tests.helpers import fit
    from tests.models.test_adapter import adapter_args

    other = tmp_path / "other"
    assert fit(*adapter_args(base, other, "--trainer.max_steps", "2")) == 0
    theirs, merged = tmp_path / "theirs", tmp_path / "merged"
    assert main(["adapter", "export", str(other / read_latest(other)), "--out", str(theirs)]) == 0
    replaced = json.loads((exported / "adapter.json").read_text())["adapter_sha256"]
    for adapter, says in ((exported, None), (exported, None), (theirs, "held the merged model")):
        capsys.readouterr()
        assert main(["adapter", "merge", str(adapter), "--base", str(base), "--out", str(merged)]) == 0
        err = capsys.readouterr().err
        assert ("which this replaces" in err) == (says is not None), err  # the same merge again: nothing to say
        assert says is None or f"'{merged}' {says} " in err
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    assert main(["adapter", "export", str(other / read_latest(other)), "--out", str(copy)]) == 0
    err = capsys.readouterr().err
    assert f"'{copy}' held the export of adapter {replaced[:12]}..., which this replaces" in err, err
    assert "give another --out to keep both" in err


NOT_SAFETENSORS = [  # (case, the tensor file's bytes, both of adapter.json's digests re-recorded over them)
    ("an unreadable header", b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":1}         xx'),
    ("a header length past the end", (2**62).to_bytes(8, "little") + b"{}"),
    ("an offset past the end", len(header := b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}').to_bytes(
        8, "little") + header + b"\0" * 4),
]  # fmt: skip


@pytest.mark.parametrize(("case", "data"), NOT_SAFETENSORS, ids=[n[0] for n in NOT_SAFETENSORS])
def test_an_adapter_file_that_is_no_safetensors_under_rerecorded_digests_is_exit_4(
    exported: Path, tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str, data: bytes  # noqa: F811
) -> None:
    """safetensors' own error was exit 1 from adapter inspect and merge, and ended doctor before any verdict."""
    from lit_psion.core import sha256_bytes, sha256_json

    forged = tmp_path / "adapter"
    shutil.copytree(exported, forged)
    (forged / "adapter.safetensors").write_bytes(data)
    meta = {key: value for key, value in read_json(forged / "adapter.json").items() if key != "metadata_sha256"}
    meta["adapter_sha256"] = sha256_bytes(data)
    (forged / "adapter.json").write_text(json.dumps({**meta, "metadata_sha256": sha256_json(meta)}))
    capsys.readouterr()
    assert main(["adapter", "inspect", str(forged)]) == 4
    err = capsys.readouterr().err
    assert "matches adapter.json but is not a safetensors file" in err and err.count("\n") == 1, err
    run = tmp_path / "runs" / tuned.name
    shutil.copytree(tuned, run)
    shutil.rmtree(run / "adapter", ignore_errors=True)
    shutil.copytree(forged, run / "adapter")
    assert main(["doctor", str(run)]) == 4
    out = capsys.readouterr().out
    assert "FAIL adapter" in out and "not a safetensors file" in out and "ok   receipts.jsonl" in out, out


@pytest.mark.parametrize("left", ["adapter.safetensors", "receipts.jsonl"])
def test_an_export_that_lost_its_adapter_json_is_a_damaged_export(
    exported: Path, tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture, left: str  # noqa: F811
) -> None:
    """doctor said exit 2 ("export an adapter from an adapter run first"): a damaged artifact is exit 4."""
    run = tmp_path / "runs" / tuned.name
    shutil.copytree(tuned, run)
    shutil.rmtree(run / "adapter", ignore_errors=True)
    shutil.copytree(exported, run / "adapter")
    (run / "adapter" / "adapter.json").unlink()
    for other in {"adapter.safetensors", "receipts.jsonl"} - {left}:
        (run / "adapter" / other).unlink()
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 4
    assert f"holds an export's {left} but no adapter.json" in capsys.readouterr().out
    assert main(["adapter", "inspect", str(run / "adapter")]) == 4


def test_a_directory_holding_another_kind_of_receipt_log_is_no_adapter(
    tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811
) -> None:
    """A run's consolidated/ (or any directory with a receipts.jsonl of something else) was told it is an export
    that lost its adapter.json (exit 4): it is no adapter (exit 2)."""
    other = tmp_path / "consolidated"
    other.mkdir()
    shutil.copy(tuned / "receipts.jsonl", other / "receipts.jsonl")
    capsys.readouterr()
    assert main(["adapter", "inspect", str(other)]) == 2
    assert "holds no adapter.json" in capsys.readouterr().err
