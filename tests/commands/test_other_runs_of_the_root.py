"""``--ckpt_path last`` takes the root's latest run: when this config is refused as not that run's (other data or
model settings, another model family), the line also names the root's other runs and how to continue one of them
(``LIT_PSION_RUN_ID``), which may well be the run the config is for. A refusal said only "give the settings it was
trained with" (the other run's), and following it would have trained the wrong run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core.run import RUN_ID_ENV, read_latest
from tests.helpers import fit

NARROW = ("--data.block_size", "16", "--data.sample_stride", "8")
"""The second run's data settings (the fixture's are 32 and 16)."""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A root holding run A (the fixture's settings) and then run B (narrower blocks), B the latest."""
    root = tmp_path_factory.mktemp("runs")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3") == 0
    first = read_latest(root)
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3", *NARROW) == 0
    return root, first, read_latest(root)


REFUSED = [  # (case, the command's arguments after the root, exit code, how the other run is reached)
    ("A's data settings", ["fit", "--trainer.max_steps", "6", "--ckpt_path", "last"], 3,
     f"give {RUN_ID_ENV}=<run id> and no --ckpt_path"),
    ("another model setting", ["fit", "--trainer.max_steps", "6", "--ckpt_path", "last", *NARROW,
                               "--model.decoder.n_layer", "1"], 4, f"give {RUN_ID_ENV}=<run id> and no --ckpt_path"),
    ("another model family", ["fit", "--ckpt_path", "last", "--config", "configs/graph_core_lorenz.yaml"], 4,
     f"give {RUN_ID_ENV}=<run id> and no --ckpt_path"),
    ("validate with A's data", ["validate", "--ckpt_path", "last"], 3,
     "give --ckpt_path <run>/checkpoints/step-NNNNNN"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "args", "code", "how"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_refusal_of_the_latest_run_names_the_roots_other_runs(root: tuple[Path, str, str], case: str,
                                                                args: list[str], code: int, how: str,
                                                                capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    runs, first, latest = root
    command, rest = args[0], args[1:]
    config = rest[rest.index("--config") + 1] if "--config" in rest else "fixtures/tiny.yaml"
    rest = [a for i, a in enumerate(rest) if "--config" not in (a, rest[i - 1] if i else "")]
    capsys.readouterr()
    assert main([command, "--config", config, "--trainer.default_root_dir", str(runs), *rest]) == code
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion: error:")]
    assert len(errors) == 1, errors
    assert f"--ckpt_path last took {latest}, the latest run under {str(runs)!r}" in errors[0]
    assert f"for another of its runs ({first}) {how}" in errors[0]
    assert read_latest(runs) == latest


def test_following_the_line_continues_the_run_the_config_is_for(root: tuple[Path, str, str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    runs, first, latest = root
    monkeypatch.setenv(RUN_ID_ENV, first)
    assert fit("--trainer.default_root_dir", str(runs), "--trainer.max_steps", "6") == 0
    assert (runs / first / "checkpoints" / "step-000006").is_dir()
    assert not (runs / latest / "checkpoints" / "step-000006").exists()


def test_no_other_run_no_hint_and_a_named_run_no_hint(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3", *NARROW) == 0
    alone = read_latest(tmp_path)
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "6", "--ckpt_path", "last") == 3
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion: error:")]
    assert "refusing to load the checkpoint" in line and "took" not in line, line
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3") == 0  # a second run
    monkeypatch.setenv(RUN_ID_ENV, alone)  # named: the line is about that run, no other
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "6") == 3
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion: error:")]
    assert "refusing to load the checkpoint" in line and "took" not in line and os.environ[RUN_ID_ENV] == alone
