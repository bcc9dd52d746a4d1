"""An artifacts root inside another root's ``base/`` or ``sessions/`` is refused, naming the root it is in; a
session's directory holding others' files is not adopted; a run command given a session's directory points to
``session``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sessions.helpers import SMALL_BASE, session

COMMANDS = {
    "init-base": ("init-base", *SMALL_BASE),
    "new": ("new", "--session_id", "s3"),
    "run": ("run", "--session_id", "s3", "--steps", "8"),
    "list": ("list",),
    "verify": ("verify", "--session_id", "s1"),
}


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the locks, which a command takes (and leaves, empty) before it refuses."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}  # fmt: skip


@pytest.mark.parametrize("inner", ["sessions", "sessions/s1", "base", "base/deeper", "sessions/new/deeper"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_root_inside_a_roots_base_or_sessions_is_refused_naming_that_root(
    trained: Path, inner: str, command: str, capsys: pytest.CaptureFixture
) -> None:
    """``session run --artifacts_root artifacts/sessions`` said to run ``session init-base`` there, which wrote a
    base into artifacts/sessions/base; ``new`` then wrote a session's files into it."""
    before = _files(trained)
    capsys.readouterr()
    verb, *rest = COMMANDS[command]
    assert session(verb, "--artifacts_root", str(trained / inner), *rest) == 2
    err = capsys.readouterr().err
    part = inner.split("/")[0]
    assert f"is inside the artifacts root '{trained}' (its {part}/ directory" in err, err
    assert err.rstrip().endswith(f"give --artifacts_root {trained}")
    assert _files(trained) == before and not (trained / "sessions" / "new").exists()


def test_a_root_beside_another_or_under_a_plain_directory_named_base_is_accepted(
    trained: Path, tmp_path: Path
) -> None:
    assert session("list", "--artifacts_root", str(trained)) == 0
    plain = tmp_path / "base" / "artifacts"  # a directory named base that is no root's
    assert session("init-base", "--artifacts_root", str(plain), *SMALL_BASE) == 0
    assert session("list", "--artifacts_root", str(plain)) == 0


def test_a_base_whose_pretraining_diverged_is_not_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """It was written (exit 0) with weights near 1e28 and ``"heldout_mse": Infinity`` in base_meta.json; every
    session made for it then failed its first run (exit 7), blamed on the session."""
    root = tmp_path / "artifacts"
    capsys.readouterr()
    assert session("init-base", "--artifacts_root", str(root), "--pretrain_steps", "20", "--lr", "1e29") == 7
    err = capsys.readouterr().err
    assert "the base's pretraining diverged" in err and "lower --lr (now 1e+29)" in err, err
    assert not root.exists()


def test_a_new_base_is_not_made_under_the_sessions_of_one_that_is_gone(
    trained: Path, capsys: pytest.CaptureFixture
) -> None:
    """With base/ removed (as the refusal to replace it advised), init-base made a new base without a word; the
    sessions made for the old one were all unusable after, and ``session list`` listed them as usual."""
    import shutil

    shutil.rmtree(trained / "base")
    before = _files(trained)
    capsys.readouterr()
    assert session("init-base", "--artifacts_root", str(trained), *SMALL_BASE) == 2
    err = capsys.readouterr().err
    assert "holds no base model, but 1 session(s) were made for the one it held (s1)" in err, err
    assert f"restore '{trained / 'base'}' from a backup, or give another --artifacts_root" in err
    assert _files(trained) == before and not (trained / "base").exists()
    assert session("init-base", "--artifacts_root", str(trained), *SMALL_BASE) == 2  # and with a base: no removal
    assert "remove" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["new", "fork"])
def test_a_new_sessions_directory_holding_other_files_is_not_adopted(
    trained: Path, command: str, capsys: pytest.CaptureFixture
) -> None:
    """``session new`` made the session in a directory holding a user's files, overwriting any of its names."""
    directory = trained / "sessions" / "s2"
    directory.mkdir()
    (directory / "notes.txt").write_text("mine")
    (directory / "plastic_state.safetensors").write_text("also mine")
    before = _files(trained)
    capsys.readouterr()
    root = ("--artifacts_root", str(trained))
    argv = ("new", *root, "--session_id", "s2") if command == "new" else \
        ("fork", *root, "--parent_session_id", "s1", "--child_session_id", "s2")  # fmt: skip
    assert session(*argv) == 2
    err = capsys.readouterr().err
    assert f"'{directory}' already holds files no session made (notes.txt, plastic_state.safetensors)" in err, err
    assert _files(trained) == before  # (a lock file aside: the refusal holds the directory's lock, as a new does)
    assert session("list", *root) == 0 and "s2" not in capsys.readouterr().out
    (directory / "notes.txt").unlink()
    (directory / "plastic_state.safetensors").unlink()
    assert session(*argv) == 0  # an empty directory (or one a crashed new left, all dot-named) is the session's


@pytest.mark.parametrize("command", [("doctor",), ("receipts", "verify"), ("ckpt", "verify"), ("compare",)])
@pytest.mark.parametrize("inner", ["sessions/s1", "sessions/s1/runs", ""])
def test_a_run_command_given_a_session_points_to_the_session_commands(
    trained: Path, command: tuple[str, ...], inner: str, capsys: pytest.CaptureFixture
) -> None:
    """Each said "is not a run directory (no run.json); give <root>/<run_id>", which a session has none of."""
    from lit_psion.cli import main

    path = trained / inner if inner else trained
    capsys.readouterr()
    assert main([*command, str(path)]) == 2
    err = capsys.readouterr().err.strip()
    if inner:
        assert "of session 's1', not a run directory" in err, err
        assert err.endswith(f"session verify --artifacts_root {trained} --session_id s1"), err
    else:
        assert f"'{trained}' is an artifacts root of sessions, not a run directory" in err, err
        assert err.endswith(f"session list --artifacts_root {trained}"), err
