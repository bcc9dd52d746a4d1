"""A command never makes its own records among a run's files, and never continues a run of another model family.

A fit given ``--trainer.default_root_dir`` of a run (or of one of its checkpoints) made a run and latest_run.json
there (exit 0): the checkpoint then failed its manifest and a resume fell back past it. ``session init-base`` and
``session new`` did the same with ``--artifacts_root``. ``LIT_PSION_RUN_ID`` naming a run of another family was
refused for its data (exit 3, "restore the original data"), not for what it is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core.run import read_latest
from tests.sessions.helpers import session
from tests.test_bad_input import one_error_line


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("roots") / "runs"
    assert main(["fit", "--config", "fixtures/tiny.yaml", "--trainer.max_steps", "6",
                 "--trainer.default_root_dir", str(root)]) == 0  # fmt: skip
    return root / read_latest(root)


def _tree(run: Path) -> dict[str, str]:
    """Every file under the run (and the root's latest_run.json) by its digest."""
    files = [*run.rglob("*"), run.parent / "latest_run.json"]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file() and p.name != ".lock"}


PLACES = {
    "the run": lambda run: run,
    "a checkpoint": lambda run: run / "checkpoints" / "step-000006",
    "a new directory in a checkpoint": lambda run: run / "checkpoints" / "step-000006" / "new",
    "the checkpoints": lambda run: run / "checkpoints",
}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("last", [False, True], ids=["new run", "ckpt_path last"])
def test_a_runs_root_in_a_run_is_refused_and_the_run_untouched(run: Path, capsys: pytest.CaptureFixture, place: str,
                                                               last: bool) -> None:  # fmt: skip
    before, root = _tree(run), PLACES[place](run)
    args = ["fit", "--config", "fixtures/tiny.yaml", "--trainer.max_steps", "3", "--trainer.default_root_dir",
            str(root), *(["--ckpt_path", "last"] if last else [])]  # fmt: skip
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    where = "is a run directory" if root == run else f"is inside run directory {str(run)!r}"
    assert line.startswith(f"lit_psion: error: trainer.default_root_dir {str(root)!r} {where}: "), line
    assert f"give the directory that holds it ({str(run.parent)!r}; continue this run with " \
        f"--trainer.default_root_dir {str(run.parent)!r} --ckpt_path last)" in line  # fmt: skip
    assert _tree(run) == before and not (run / "checkpoints" / "step-000006" / "new").exists()
    assert main(["doctor", str(run)]) == 0


@pytest.mark.parametrize("command", [("init-base",), ("new", "--session_id", "s1")])
@pytest.mark.parametrize("place", ["the run", "a checkpoint"])
def test_a_sessions_root_in_a_run_is_refused_and_the_run_untouched(
    run: Path, capsys: pytest.CaptureFixture, command: tuple[str, ...], place: str
) -> None:
    before, root = _tree(run), PLACES[place](run)
    capsys.readouterr()
    assert session(*command, "--artifacts_root", str(root)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--artifacts_root {str(root)!r} " in line and "give a directory outside any run" in line, line
    assert _tree(run) == before and not (root / "base").exists() and not (root / "sessions").exists()


def test_a_run_named_by_the_environment_of_another_family_is_refused_for_that(
    run: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _tree(run)
    monkeypatch.setenv("LIT_PSION_RUN_ID", run.name)
    args = ["fit", "--config", "fixtures/mosaic_tiny.yaml", "--trainer.max_steps", "9",
            "--trainer.default_root_dir", str(run.parent)]  # fmt: skip
    assert main(args) == 4
    line = one_error_line(capsys.readouterr().err)
    assert line == (f"lit_psion: error: LIT_PSION_RUN_ID names run {run.name}, which trains "
                    "lit_psion.models.DecoderLM, but this config builds lit_psion.models.MosaicLM; continue it with "
                    f"its own config ({run / 'config.yaml'}), or name another run"), line
    assert _tree(run) == before


def test_a_named_run_of_another_family_without_a_checkpoint_yet_is_refused_too(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped before its first checkpoint was taken over: its config.yaml then named the other family."""
    root = tmp_path / "runs"
    args = ["fit", "--config", "fixtures/tiny.yaml", "--trainer.max_steps", "4", "--trainer.default_root_dir",
            str(root), "--trainer.callbacks+=tests.callbacks.test_checkpoint_state.StateFromStep",
            "--trainer.callbacks.step=0"]  # fmt: skip
    assert main(args) == 2  # refused at its first checkpoint: a run with a config and no checkpoint
    run = root / read_latest(root)
    assert not list((run / "checkpoints").glob("step-*"))
    before = _tree(run)
    monkeypatch.setenv("LIT_PSION_RUN_ID", run.name)
    capsys.readouterr()
    assert main(["fit", "--config", "fixtures/mosaic_tiny.yaml", "--trainer.max_steps", "3",
                 "--trainer.default_root_dir", str(root)]) == 4  # fmt: skip
    assert f"LIT_PSION_RUN_ID names run {run.name}, which trains lit_psion.models.DecoderLM" in capsys.readouterr().err
    assert _tree(run) == before


def test_a_run_that_is_not_its_roots_latest_is_told_how_to_continue_it(run: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """It said `--ckpt_path last`, which continues the root's latest run: another one."""
    from lit_psion.core.run import write_latest

    kept = read_latest(run.parent)
    write_latest(run.parent, "20261207-000000-0other")
    try:
        args = ["fit", "--config", "fixtures/tiny.yaml", "--trainer.default_root_dir", str(run)]
        assert main(args) == 2
        assert (f"continue this run with LIT_PSION_RUN_ID={run.name} and --trainer.default_root_dir "
                f"{str(run.parent)!r} (--ckpt_path last would take another run, 20261207-000000-0other))"
                in one_error_line(capsys.readouterr().err))  # fmt: skip
    finally:
        write_latest(run.parent, kept)
