"""An adapter run resumed on another base than the one it was trained on is refused naming both bases."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.core.run import read_latest
from tests.helpers import fit
from tests.models.test_adapter import adapter_args


def _base(root: Path, *args: str) -> Path:
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "6", *args) == 0
    return root / read_latest(root)


def test_an_adapter_resume_given_another_base_names_the_base_it_was_trained_on(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """It said "the same settings: the base they name is another checkpoint now, as when the base run was
    continued", for a base of another size at another path."""
    trained_on = _base(tmp_path / "base")
    smaller = _base(tmp_path / "small", "--model.init_args.decoder.n_layer", "1")
    ft = tmp_path / "ft"
    assert fit(*adapter_args(trained_on, ft, "--trainer.max_steps", "2")) == 0
    capsys.readouterr()
    assert fit(*adapter_args(smaller, ft, "--trainer.max_steps", "4", "--ckpt_path", "last")) == 4
    err = capsys.readouterr().err
    assert f"(model.base_checkpoint: '{trained_on}' in the run's config.yaml, '{smaller}' here)" in err, err
    assert "the same settings" not in err


def test_muon_named_for_an_adapter_run_without_muon_on_adapters_says_adamw_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """config.yaml said muon while AdamW trained the adapters, without a word (docs/adapters.md alone said so)."""
    from tests.helpers import latest_checkpoint

    base = _base(tmp_path / "base")
    ft = tmp_path / "ft"
    capsys.readouterr()
    assert fit(*adapter_args(base, ft, "--trainer.max_steps", "2", "--model.init_args.optimizer.name", "muon")) == 0
    note = "optimizer.name is muon, but AdamW trains an AdapterLM's adapters unless"
    assert capsys.readouterr().err.count(note) == 1
    groups = latest_checkpoint(ft)["optimizer_states"][0]["param_groups"]
    assert all("betas" in group and "ns_steps" not in group for group in groups)  # AdamW's, none of Muon's
    assert fit(*adapter_args(base, ft, "--trainer.max_steps", "4", "--model.init_args.optimizer.name", "muon",
                             "--ckpt_path", "last")) == 0  # fmt: skip
    assert capsys.readouterr().err.count(note) == 1  # a resume asks for the optimizer twice: said once
    capsys.readouterr()
    assert fit(*adapter_args(base, tmp_path / "ft2", "--trainer.max_steps", "2", "--model.init_args.optimizer.name",
                             "muon", "--model.init_args.muon_on_adapters", "true")) == 0  # fmt: skip
    assert note not in capsys.readouterr().err


def test_muon_on_adapters_under_adamw_says_adamw_trains(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The flag was ignored without a word under the presets' AdamW."""
    base = _base(tmp_path / "base")
    capsys.readouterr()
    assert fit(*adapter_args(base, tmp_path / "ft", "--trainer.max_steps", "2", "--model.init_args.muon_on_adapters",
                             "true")) == 0  # fmt: skip
    assert capsys.readouterr().err.count("muon_on_adapters is set, but optimizer.name is adamw, which trains the "
                                        "adapters; give --model.init_args.optimizer.name muon for Muon") == 1


def test_a_relative_base_that_is_not_there_says_where_it_was_read_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume from another directory named the relative path alone, as if it were gone."""
    from lit_psion.core.errors import CheckpointError
    from lit_psion.models.adapter_lm import load_base

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=rf"'runs/base' does not exist \(a relative path, read from "
                                              rf"'{tmp_path}'\); give the base run directory"):  # fmt: skip
        load_base("runs/base")
