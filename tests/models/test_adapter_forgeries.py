"""Adapters every digest agrees with that still must not be merged: a base weight smuggled in beside the LoRA
factors, settings no fine-tune takes, factors whose update overflows (found by the model-families review); and
files nested too deeply to parse, refused in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lit_psion.cli import main
from tests.models.adapter_forging import forged
from tests.models.test_adapter import base, exported, tuned  # noqa: F401  (fixtures: a base, its export)

FORGED = {  # case: (forgery, what the one error line says, whether inspect refuses it too)
    "base-weight-added": (forged(tensors=lambda w: {**w, "model.embed.weight": torch.zeros(2, 2)}),
                          "holds 'model.embed.weight', which is not a LoRA factor", True),
    "head-weight-added": (forged(tensors=lambda w: {**w, "model.head.base.weight": torch.zeros(2, 2)}),
                          "holds 'model.head.base.weight', which is not a LoRA factor", True),
    "alpha-huge": (forged("alpha", 1e300), "alpha is 1e+300, not a number in (0, 1e+06]", True),
    "target-unknown": (forged("targets", ["bogus"]), "targets is ['bogus'], not a list of LoRA targets", True),
    "update-overflows": (forged(tensors=lambda w: {k: v * 1e30 for k, v in w.items()}),
                         "gives a weight that is not finite (its factors are finite, their update overflows)", False),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FORGED))
def test_a_forged_adapter_is_refused_by_merge_and_nothing_is_written(
    case: str, base: Path, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811
) -> None:
    """A tensor named like a base weight was loaded over the verified base (strict=False) and merged, exit 0; an
    overflowing update was exit 1 (a ValueError) saying the adapter held NaN or inf."""
    adapter = tmp_path / "adapter"
    shutil.copytree(exported, adapter)
    forge, message, inspect_refuses = FORGED[case]
    forge(adapter)
    capsys.readouterr()
    assert main(["adapter", "merge", str(adapter), "--base", str(base), "--out", str(tmp_path / "merged")]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "merged").exists()
    assert main(["adapter", "inspect", str(adapter)]) == (4 if inspect_refuses else 0)


@pytest.mark.parametrize("command", ["export", "merge"])
def test_a_dangling_link_as_out_is_refused_before_any_work(
    command: str, base: Path, tuned: Path, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811
) -> None:
    """A symbolic link to nowhere as --out was exit 1 (FileExistsError) after the whole merge was done."""
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "nowhere" / "x")
    argv = ["adapter", "export", str(tuned), "--out", str(out)] if command == "export" else \
        ["adapter", "merge", str(exported), "--base", str(base), "--out", str(out)]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a symbolic link to" in err[0] and "which does not exist" in err[0], err
    assert not (tmp_path / "nowhere").exists()


DEEP = "[" * 100_000 + "]" * 100_000
"""JSON nested past Python's recursion limit: json.loads raises RecursionError, not ValueError."""


def test_json_nested_too_deeply_is_refused_in_one_line_not_an_unexpected_error(
    base: Path, tuned: Path, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811
) -> None:
    """adapter.json, the tensor file's header or an --out's receipts.jsonl nested 100000 deep were exit 1
    (RecursionError); an export of a run whose promotion.json was so nested too."""
    adapter, deep_header = tmp_path / "adapter", tmp_path / "header"
    shutil.copytree(exported, adapter)
    shutil.copytree(exported, deep_header)
    (adapter / "adapter.json").write_text(DEEP)
    header = ('{"a":' + DEEP + "}").encode()
    (deep_header / "adapter.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    out = tmp_path / "out"
    out.mkdir()
    (out / "receipts.jsonl").write_text(DEEP + "\n")
    run = tmp_path / "runs" / tuned.name
    shutil.copytree(tuned, run, ignore=shutil.ignore_patterns("adapter"))
    (run / "promotion.json").write_text(DEEP)
    cases = [  # (argv, exit code, what the one line says)
        (["adapter", "inspect", str(adapter)], 4, "adapter.json' is not valid JSON (nested too deeply to read)"),
        (["adapter", "merge", str(adapter), "--base", str(base), "--out", str(tmp_path / "m")], 4, "nested too deeply"),
        (["adapter", "inspect", str(deep_header)], 4, "adapter.safetensors' is corrupt: expected sha256"),
        (["adapter", "merge", str(exported), "--base", str(base), "--out", str(out)], 5,
         "receipts.jsonl: line 1: malformed: not a receipt envelope (nested too deeply to parse)"),
    ]  # fmt: skip
    for argv, code, says in cases:
        capsys.readouterr()
        assert main(argv) == code, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "m").exists()
    assert sorted(p.name for p in out.iterdir()) == [".lock", "receipts.jsonl"]
    assert (out / "receipts.jsonl").read_text() == DEEP + "\n"
    assert main(["adapter", "export", str(run), "--out", str(tmp_path / "exported")]) == 0  # no decision: no caveat


def _tokenizer_swapped(manifest: Path) -> None:
    manifest.write_text(manifest.read_text().replace('"tokenizer_digest": "', '"tokenizer_digest": "0'))


@pytest.mark.parametrize(("forge", "says"), [
    (lambda manifest: manifest.unlink(), "is missing: it records the tokenizer the base trained with"),
    (lambda manifest: manifest.write_text("[" * 100_000 + "]" * 100_000), "is unreadable (RecursionError)"),
    (_tokenizer_swapped, "is not the data manifest its checkpoint step-"),
], ids=["deleted", "nested too deeply", "another tokenizer digest"])  # fmt: skip
def test_a_base_runs_data_manifest_is_held_to_its_checkpoint(
    forge: object, says: str, base: Path, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811
) -> None:
    """The tokenizer a merged model pins came from the base run's data_manifest.json unverified: deleted or
    unreadable it was skipped (the merge recorded no tokenizer, so generate took any), nested too deeply it was exit
    1, and edited it was believed. The checkpoint records the manifest's digest."""
    copy = tmp_path / "runs" / base.name  # (a run's directory is named by its id)
    shutil.copytree(base, copy)
    forge(copy / "data_manifest.json")
    capsys.readouterr()
    assert main(["adapter", "merge", str(exported), "--base", str(copy), "--out", str(tmp_path / "merged")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "restore it from a backup" in err[0], err
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("removed", [False, True], ids=["copied in", "log removed"])
def test_an_exports_files_copied_in_from_another_export_are_refused(
    base: Path, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture, removed: bool  # noqa: F811
) -> None:
    """adapter.json and adapter.safetensors of another export (they bind each other) passed inspect and merge, though
    the directory's export receipt names other digests (only doctor, and generate for merges, held them to it)."""
    other, adapter = tmp_path / "other", tmp_path / "adapter"
    shutil.copytree(exported, other)
    forged("alpha", 4.0)(other)  # another export, whole: its files and its own log agree
    assert main(["adapter", "inspect", str(other)]) == 0
    shutil.copytree(exported, adapter)
    for name in ("adapter.json", "adapter.safetensors"):
        shutil.copy(other / name, adapter / name)
    if removed:
        (adapter / "receipts.jsonl").unlink()
    capsys.readouterr()
    says = "receipt log receipts.jsonl is missing" if removed else "the files were copied in from another export"
    assert main(["adapter", "inspect", str(adapter)]) == 5
    assert says in capsys.readouterr().err
    assert main(["adapter", "merge", str(adapter), "--base", str(base), "--out", str(tmp_path / "merged")]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "merged").exists()
