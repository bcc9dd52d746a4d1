"""An adapter export's or merge's output given to a command of runs: named for what it is, never "delete it"."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.cli import main
from tests.models import test_adapter

base, tuned = test_adapter.base, test_adapter.tuned  # the base run and its LoRA run, built once for this module too


def test_an_export_or_merge_given_to_a_runs_command_names_adapter_inspect(
    base: Path, tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`doctor` and `ckpt verify` read an export or merge (receipts, no run.json) as a fit stopped as it started and
    said to delete it; `receipts verify` said "ok: 0 receipts verified" of one whose log was emptied."""
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
