"""A window program's records that `window verify` refuses are refused by `window plan` (and `window run`) before
anything is planned on them, and a record of the wrong shape is exit 5 with one line from every reader, never a
traceback (exit 1).

Found by an adversarial review: a pointer.json rolled back to an earlier revision, or a dispositions.json edited
to replay an accepted slice, passed `plan` and `run` (exit 0), which planned on them and promoted over them, while
`verify` failed the program from then on; pointer.json's checkpoint a number, a window.json state no window has,
dispositions.json's assignments a list and the like crashed `verify`, `status` and `plan`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.windows.contribute import contribute
from lit_psion.windows.coordinator import close_window, open_window
from lit_psion.windows.program import plan_window
from tests.windows.helpers import new_program


@pytest.fixture(scope="module")
def reconciled(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A program whose w-0001 promoted its candidate."""
    root = new_program(base, tmp_path_factory.mktemp("reconciled") / "windows", contributors=2)
    plan = plan_window(root)
    open_window(root, plan.window_id)
    for assignment in plan.assignments:
        contribute(root, plan.window_id, assignment.assignment_id)
    assert close_window(root, plan.window_id)["decision"] == "promote"
    return root


def _set(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        path = root / name
        value = read_json(path)
        change(value)
        path.write_text(json.dumps(value))

    return edit


def _rolled_back(pointer: dict[str, Any], root: Path) -> None:
    plan = read_json(root / "windows" / "w-0001" / "plan.json")
    pointer.update(checkpoint=plan["input_checkpoint"], revision=plan["input_revision"])


def _rollback(root: Path) -> None:
    _set("pointer.json", lambda pointer: _rolled_back(pointer, root))(root)


W1 = "windows/w-0001/"
TAMPERED = {  # what an adversary or a bad copy did to one record
    "pointer rolled back to w-0001's input": _rollback,
    "an accepted slice marked replay_required": _set(W1 + "dispositions.json", lambda d: d["assignments"]["a00"].update(
        disposition="replay_required", reasons=["missing_at_seal"])),
    "promotion's decision edited": _set(W1 + "promotion.json", lambda p: p.update(decision="hold")),
    "window.json's receipt head moved": _set(W1 + "window.json", lambda w: w.update(receipts_head=5)),
    "pointer's checkpoint a number": _set("pointer.json", lambda p: p.update(checkpoint=5)),
    "pointer's revision null": _set("pointer.json", lambda p: p.update(revision=None)),
    "window.json's receipt head a list": _set(W1 + "window.json", lambda w: w.update(receipts_head=[])),
    "window.json's state unknown": _set(W1 + "window.json", lambda w: w.update(state="x")),
    "assignments a list": _set(W1 + "dispositions.json", lambda d: d.update(assignments=[])),
    "assignments null": _set(W1 + "dispositions.json", lambda d: d.update(assignments=None)),
    "an assignment null": _set(W1 + "dispositions.json", lambda d: d["assignments"].update(a00=None)),
    "promotion's scores null": _set(W1 + "promotion.json", lambda p: p.update(scores=None)),
    "promotion.json empty": _set(W1 + "promotion.json", lambda p: p.clear()),
    "next_slice text": _set("program.json", lambda p: p.update(next_slice="abc")),
    "next_slice null": _set("program.json", lambda p: p.update(next_slice=None)),
    "next_slice a fraction": _set("program.json", lambda p: p.update(next_slice=4.5)),
    "next_slice huge": _set("program.json", lambda p: p.update(next_slice=1e308)),
    "next_slice negative": _set("program.json", lambda p: p.update(next_slice=-1)),
}  # fmt: skip


@pytest.mark.parametrize("tamper", list(TAMPERED), ids=list(TAMPERED))
def test_what_verify_refuses_plan_refuses_first_and_no_reader_crashes(
    reconciled: Path, tmp_path: Path, capsys: pytest.CaptureFixture, tamper: str
) -> None:
    root = tmp_path / "windows"
    shutil.copytree(reconciled, root)
    TAMPERED[tamper](root)
    codes = {}
    for command in ("verify", "plan", "status"):
        capsys.readouterr()
        codes[command] = main(["window", command, str(root)])
        err = capsys.readouterr().err.strip().splitlines()
        assert codes[command] in (0, 4, 5) and len(err) == (codes[command] != 0), (command, codes[command], err)
    assert codes["verify"] in (4, 5) and codes["plan"] == codes["verify"], codes
    assert not (root / "windows" / "w-0002").exists()  # nothing planned on it


def test_a_close_cut_short_after_its_receipts_is_named_with_the_command_that_finishes_it(
    reconciled: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Killed between the reconcile's receipts and window.json: verify said only that the two disagree."""
    root = tmp_path / "windows"
    shutil.copytree(reconciled, root)
    _set(W1 + "window.json", lambda w: w.update(state="scored"))(root)
    capsys.readouterr()
    assert main(["window", "verify", str(root)]) == 5
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith(f"a close was cut short: python -m lit_psion window close {root} w-0001 finishes it"), line
    assert main(["window", "close", str(root), "w-0001"]) == 0
    assert main(["window", "verify", str(root)]) == 0
