"""The decoder's shape comes from its data: a vocab_size or block_size given for the model that the data would
replace is refused, not silently dropped while config.yaml records it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.run import read_latest
from tests.test_bad_input import one_error_line

TINY = "fixtures/tiny.yaml"


def _fit(root: Path, *args: str, config: str = TINY) -> int:
    return main(["fit", "--config", config, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "1", *args])


@pytest.mark.parametrize(("name", "value", "flag"), [("vocab_size", "4096", "its tokenizer's vocabulary"),
                                                     ("block_size", "64", "--data.block_size")])  # fmt: skip
def test_a_model_shape_the_data_would_replace_is_refused_before_a_run_exists(
        tmp_path: Path, capsys: pytest.CaptureFixture, name: str, value: str, flag: str) -> None:  # fmt: skip
    """`--model.init_args.decoder.vocab_size 4096` trained a model of the data's vocabulary while config.yaml said
    4096."""
    assert _fit(tmp_path, f"--model.init_args.decoder.{name}", value) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"decoder.{name} {value} is not the data's (" in line and flag in line, line
    assert f"drop --model.init_args.decoder.{name}, or set it on the data" in line, line
    assert read_latest(tmp_path) is None


def test_a_model_shape_equal_to_the_data_is_taken(tmp_path: Path) -> None:
    assert _fit(tmp_path, "--model.init_args.decoder.block_size", "32", "--data.init_args.block_size", "32") == 0
    assert read_json(tmp_path / read_latest(tmp_path) / "data_manifest.json")["block_size"] == 32
