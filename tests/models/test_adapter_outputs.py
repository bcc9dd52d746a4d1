"""Where adapter export and merge write: a new or empty directory or their own earlier output, checked first."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models.test_adapter import base, tuned  # noqa: F401  (the module's fixtures: a base and a tuned run)


def test_an_output_directory_that_holds_something_else_is_refused_before_anything_is_written(
    base: Path, tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811  (the fixtures above)
) -> None:
    """A merge into the adapter export itself wrote model.safetensors and merge.json there, then failed on the log
    (exit 5), and `generate` sampled from the half-written merge; an export into a runs root was taken, and
    `receipts verify` then told the user to delete the root. A renamed export takes a second export."""
    from lit_psion.cli import main

    export = tmp_path / "adapter"
    assert main(["adapter", "export", str(tuned), "--out", str(export)]) == 0
    exported = {p.name: p.read_bytes() for p in export.iterdir()}
    capsys.readouterr()
    assert main(["adapter", "merge", str(export), "--base", str(base), "--out", str(export)]) == 2
    assert "holds adapter.json, adapter.safetensors, so it is not a merge directory" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in export.iterdir()} == exported
    assert main(["adapter", "export", str(tuned), "--out", str(tuned.parent)]) == 2  # the runs root
    assert "so it is not an adapter export directory" in capsys.readouterr().err
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
