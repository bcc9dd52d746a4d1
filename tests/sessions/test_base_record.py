"""An edited base record (base_meta.json) is named as edited by every session command, never as another base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_psion.core import read_json
from tests.sessions.helpers import session


def _edit_base_record(trained: Path, **fields: str) -> None:
    path = trained / "base" / "base_meta.json"
    path.write_text(json.dumps({**read_json(path), **fields}))


def _resign(trained: Path, base_ckpt_hash: str) -> None:
    """base_meta.json's checkpoint digest rewritten with a signature to match: a record that holds together."""
    from lit_psion.sessions.settings import WorldConfig
    from lit_psion.sessions.store import model_signature

    config = WorldConfig(**read_json(trained / "base" / "base_meta.json")["config"])
    _edit_base_record(trained, base_ckpt_hash=base_ckpt_hash, model_signature=model_signature(config, base_ckpt_hash))


BASE_RECORD_EDITS = {  # case: (edit, what each command's line says); it said "a different base model", or nothing
    "checkpoint digest flipped": (lambda t: _edit_base_record(t, base_ckpt_hash="0" * 64), "does not hold together"),
    "signature flipped": (lambda t: _edit_base_record(t, model_signature="0" * 64), "does not hold together"),
    "both rewritten to agree": (lambda t: _resign(t, "0" * 64), "base_meta.json was edited"),
}


@pytest.mark.parametrize("case", BASE_RECORD_EDITS)
def test_an_edited_base_record_is_said_as_edited_by_every_command(trained: Path, capsys: pytest.CaptureFixture,
                                                                  case: str) -> None:  # fmt: skip
    edit, says = BASE_RECORD_EDITS[case]
    edit(trained)
    root = ("--artifacts_root", str(trained))
    for argv in (("run", *root, "--session_id", "s1", "--steps", "32"), ("verify", *root, "--session_id", "s1"),
                 ("fork", *root, "--parent_session_id", "s1", "--child_session_id", "c1")):  # fmt: skip
        capsys.readouterr()
        assert session(*argv) == 5, argv
        assert says in capsys.readouterr().err, argv
    assert len(read_json(trained / "sessions" / "s1" / "meta.json")["runs"]) == 1
    assert not (trained / "sessions" / "c1").exists()
    new = ("new", *root, "--session_id", "s2", "--mu", "0.1", "--env_mode", "linear")  # a session for a base that
    assert session(*new) in (4, 5) and not (trained / "sessions" / "s2").exists()  # could never run


def test_a_deleted_base_says_to_restore_it_not_to_make_another(trained: Path, capsys: pytest.CaptureFixture) -> None:
    """With base/ removed, every command advised `session init-base`, which makes a base every session refuses."""
    import shutil

    shutil.rmtree(trained / "base")
    root = ("--artifacts_root", str(trained))
    for argv in (("run", *root, "--session_id", "s1", "--steps", "32"), ("verify", *root, "--session_id", "s1"),
                 ("fork", *root, "--parent_session_id", "s1", "--child_session_id", "c1")):  # fmt: skip
        capsys.readouterr()
        assert session(*argv) == 2, argv
        said = capsys.readouterr().err
        assert "1 session(s) were made for one (s1): restore" in said and "from a backup" in said, (argv, said)
        assert "run `python -m lit_psion session init-base" not in said, argv
    assert len(read_json(trained / "sessions" / "s1" / "meta.json")["runs"]) == 1
    assert not (trained / "sessions" / "c1").exists()
