"""A path given where a run directory is wanted, and is not one, is named for what it is: each of these said only
"is not a run directory (no run.json); give <root>/<run_id>", which a runs root or a copied-out checkpoint has no use
for."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core.run import read_latest
from tests.helpers import fit


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert fit("--trainer.default_root_dir", str(root)) == 0
    return root


def _copied_checkpoint(root: Path, tmp: Path) -> Path:
    (newest,) = sorted((root / read_latest(root) / "checkpoints").glob("step-*"))[-1:]
    return Path(shutil.copytree(newest, tmp / "kept-step"))


PATHS: list[tuple[str, Callable[[Path, Path], Path], str]] = [  # (case, the path given, what the line says)
    ("missing", lambda root, tmp: tmp / "nope", "does not exist; give <root>/<run_id>"),
    ("a link to nothing", lambda root, tmp: _dangling(tmp), "does not exist (a symlink to nothing)"),
    ("a file", lambda root, tmp: _file(tmp), "is a file, not a run directory; give <root>/<run_id>"),
    ("the runs root", lambda root, tmp: root, "is a runs root of 1 run(s), not one run: give one of them, such as the "
     "latest, "),
    ("a checkpoint copied out", _copied_checkpoint, "is a checkpoint directory outside any run, not a run directory; "
     "python -m lit_psion ckpt verify "),
    ("an empty directory", lambda root, tmp: tmp, "is not a run directory (no run.json); give <root>/<run_id>"),
]


def _dangling(tmp: Path) -> Path:
    (tmp / "link").symlink_to(tmp / "gone")
    return tmp / "link"


def _file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("not a run")
    return tmp / "notes.txt"


@pytest.mark.parametrize(("case", "given", "says"), PATHS, ids=[c[0] for c in PATHS])
@pytest.mark.parametrize("command", [["receipts", "verify"], ["doctor"], ["compare"]])
def test_a_path_that_is_not_a_run_is_named_for_what_it_is(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          case: str, given: Callable, says: str,
                                                          command: list[str]) -> None:  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    path = given(root, work)
    capsys.readouterr()
    assert main([*command, str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"lit_psion: error: {str(path)!r} {says}"), line
    if case == "the runs root":
        assert line.endswith(str(root / read_latest(root))), line
    if case == "a checkpoint copied out":
        assert line.endswith(f"ckpt verify {path} checks it"), line
        capsys.readouterr()
        assert main(["ckpt", "verify", str(path)]) == 0  # what the line says checks it does
