"""Where a command may write its output: not inside a run, a window program or a sessions root, whose commands would
read what is written there as their own records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_psion.core.errors import ConfigError
from lit_psion.core.layout import refuse_output_in_a_run


def _program(root: Path) -> Path:
    (root / "windows").mkdir(parents=True)
    (root / "program.json").write_text(json.dumps({"version": 1}))
    return root / "windows" / "w-0005"


def _sessions(root: Path) -> Path:
    (root / "sessions").mkdir(parents=True)
    (root / "sessions" / "index.json").write_text("{}")
    return root / "sessions" / "s9"


@pytest.mark.parametrize(("make", "kind"), [(_program, "window program"), (_sessions, "sessions artifacts root")])
def test_an_output_inside_a_window_program_or_a_sessions_root_is_refused(tmp_path: Path, make: object,
                                                                        kind: str) -> None:  # fmt: skip
    """`compare --out PROGRAM/windows/w-0005` wrote there, exit 0; every window command then said the next window's
    window.json was missing and to restore it from a backup, which there was none of."""
    out = make(tmp_path / "root")
    with pytest.raises(ConfigError, match=f"is inside {kind} .*give a directory outside it"):
        refuse_output_in_a_run(out)
    assert not out.exists()
    refuse_output_in_a_run(tmp_path / "root")  # the root itself is another command's to refuse (not new or empty)
    refuse_output_in_a_run(tmp_path / "elsewhere")


def test_compare_refuses_an_out_inside_a_window_program(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lit_psion.cli import main
    from lit_psion.core.run import read_latest
    from tests.helpers import fit

    assert fit("--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.max_steps", "2") == 0
    out = _program(tmp_path / "program")
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "runs" / read_latest(tmp_path / "runs")), "--out", str(out)]) == 2
    assert "is inside window program" in capsys.readouterr().err and not out.exists()
