"""A completed run named again: ``LIT_PSION_RUN_ID`` (a mesh re-formed around its last step) ends at once, exit 0,
only when the config is the run's own; a config that changes the run's model, data or trainer settings is refused
whichever way the run is named (the run id said "is complete", exit 0, of another model on other data, and
``--ckpt_path last`` said to raise max_steps, which then failed as another model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.core import RunLayout
from lit_psion.core.run import RUN_ID_ENV, read_latest
from tests.helpers import fit

OTHER = {"a model setting": ("--model.init_args.decoder.n_layer", "1"),
         "a data setting": ("--data.init_args.block_size", "16"),
         "a trainer setting": ("--trainer.accumulate_grad_batches", "2")}  # fmt: skip


@pytest.fixture
def completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunLayout:
    monkeypatch.setenv(RUN_ID_ENV, "r1")
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "4") == 0
    return RunLayout(tmp_path, "r1")


def test_the_run_named_again_with_its_own_config_is_complete(
    completed: RunLayout, capsys: pytest.CaptureFixture
) -> None:
    before = completed.receipts.read_bytes()
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(completed.root), "--trainer.max_steps", "4",
               "--trainer.log_every_n_steps", "3") == 0  # (what is shown is no other run)
    assert "lit_psion: run r1 is complete at step 4" in capsys.readouterr().err
    assert completed.receipts.read_bytes() == before


@pytest.mark.parametrize("named_by", ["LIT_PSION_RUN_ID", "--ckpt_path last"])
@pytest.mark.parametrize("case", OTHER)
def test_another_config_for_a_completed_run_is_refused_in_one_line(
    completed: RunLayout, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, case: str, named_by: str
) -> None:
    if named_by != RUN_ID_ENV:
        monkeypatch.delenv(RUN_ID_ENV)
    before = {path.name: path.read_bytes() for path in completed.run_dir.iterdir() if path.is_file()}
    capsys.readouterr()
    ckpt = ["--ckpt_path", "last"] if named_by != RUN_ID_ENV else []
    assert fit("--trainer.default_root_dir", str(completed.root), "--trainer.max_steps", "4", *OTHER[case], *ckpt) == 2
    err = capsys.readouterr().err.strip().splitlines()
    flag = OTHER[case][0].replace(".init_args", "").lstrip("-")
    assert len(err) == 1 and "is already at step 4, and this config is not the run's own: it sets" in err[0], err
    assert flag in err[0] and f"give the run's config ({completed.config})" in err[0], err
    assert {path.name: path.read_bytes() for path in completed.run_dir.iterdir() if path.is_file()} == before
    assert read_latest(completed.root) == "r1"
