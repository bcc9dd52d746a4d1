"""A window's directory is the program's own, and a submission counts only while its window is active.

A window directory (or ``windows/``) replaced by a symlink was closed through: its seal and scores were written
elsewhere before an inner directory's check refused it, and ``window verify`` then passed. A contribution whose
window was sealed while it trained was renamed in anyway and said "submitted", exit 0.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import atomic_write_json, read_json
from lit_psion.core.windows import WindowStateError
from lit_psion.windows import contribute as contribute_module
from lit_psion.windows.contribute import contribute, train_adapter, write_artifact
from lit_psion.windows.coordinator import open_window
from lit_psion.windows.program import Program, plan_window
from lit_psion.windows.validate import seal
from tests.windows.helpers import new_program


@pytest.fixture(scope="module")
def active(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A program whose w-0001 is active: a00 has submitted, a01 has not."""
    root = new_program(base, tmp_path_factory.mktemp("custody") / "windows", contributors=2)
    plan = plan_window(root)
    open_window(root, plan.window_id)
    contribute(root, plan.window_id, "a00")
    return root


def _symlink_the_window(root: Path) -> None:
    shutil.move(root / "windows" / "w-0001", root.parent / "elsewhere")
    (root / "windows" / "w-0001").symlink_to(root.parent / "elsewhere")


def _symlink_the_windows(root: Path) -> None:
    shutil.move(root / "windows", root.parent / "elsewhere")
    (root / "windows").symlink_to(root.parent / "elsewhere")


@pytest.mark.parametrize("harm", [_symlink_the_window, _symlink_the_windows])
@pytest.mark.parametrize("command", [["close", "{root}", "w-0001"], ["verify", "{root}"], ["status", "{root}"],
                                     ["plan", "{root}"], ["contribute", "{root}", "w-0001", "a01"]])  # fmt: skip
def test_a_window_reached_through_a_symlink_is_refused_before_anything_is_written(
    active: Path, tmp_path: Path, capsys: pytest.CaptureFixture, harm: Callable[[Path], None], command: list[str]
) -> None:
    copy = Path(shutil.copytree(active, tmp_path / "windows", symlinks=True))
    before = (active / "windows" / "w-0001" / "receipts.jsonl").read_bytes()
    harm(copy)
    capsys.readouterr()
    assert main(["window", *[part.format(root=copy) for part in command]]) == 5
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "is a symlink; the program's directories are its own" in line, line
    window = tmp_path / "elsewhere" if harm is _symlink_the_window else tmp_path / "elsewhere" / "w-0001"
    assert read_json(window / "window.json")["state"] == "active"
    assert (window / "receipts.jsonl").read_bytes() == before, "nothing was written through the link"
    assert sorted(path.name for path in (window / "contributions").iterdir()) == ["a00"]


def _staged_a01(root: Path) -> Path:
    """a01's artifact, trained and staged as its contributor stages it, not yet submitted."""
    program = Program(root)
    plan = program.plan("w-0001")
    assignment = plan.assignment("a01")
    tensors, summary = train_adapter(program, plan, assignment)
    staged = program.window_dir("w-0001") / "contributions" / ".a01.tmp-test"
    return write_artifact(staged, plan, assignment, assignment.contributor, tensors, summary)


def test_a_window_sealed_while_its_contributor_trained_takes_nothing(active: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(active, tmp_path / "windows"))
    staged = _staged_a01(root)
    seal(root, "w-0001")
    with pytest.raises(WindowStateError, match="became 'sealed' while a01 trained: nothing was submitted"):
        contribute_module.submit(Program(root), "w-0001", "a01", staged)
    assert sorted(path.name for path in (root / "windows" / "w-0001" / "contributions").iterdir()) == ["a00"]


def test_a_submission_renamed_in_just_after_the_seal_is_told_it_does_not_count(
    active: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = Path(shutil.copytree(active, tmp_path / "windows"))
    staged = _staged_a01(root)
    rename = contribute_module.os.rename

    def sealed_first(source: Path, target: Path) -> None:  # the coordinator's seal lands between check and rename
        seal(root, "w-0001")
        rename(source, target)

    monkeypatch.setattr(contribute_module.os, "rename", sealed_first)
    with pytest.raises(WindowStateError, match="a01 arrived after the seal of w-0001: it is not counted"):
        contribute_module.submit(Program(root), "w-0001", "a01", staged)
    monkeypatch.undo()
    assert main(["window", "close", str(root), "w-0001"]) == 0
    dispositions = read_json(root / "windows" / "w-0001" / "dispositions.json")["assignments"]
    assert dispositions["a01"]["reasons"] == ["arrived_after_seal"]


def test_a_submission_that_beat_the_seal_counts(active: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(active, tmp_path / "windows"))
    staged = _staged_a01(root)
    target = contribute_module.submit(Program(root), "w-0001", "a01", staged)
    assert target.is_dir() and seal(root, "w-0001")["a01"] is not None


def _swap_revision_0(root: Path, base: Path) -> None:
    """revisions/base rewritten from the base with other weights, the same parent, and the pointer moved to it."""
    from lit_psion.checkpoint_io import write_checkpoint
    from lit_psion.core.checkpoint import verify_checkpoint
    from lit_psion.models.adapter_lm import load_base

    state, _, digest, _ = load_base(base)
    weights = {name: value.clone() for name, value in state["state_dict"].items()}
    weights["model.head.weight"].fill_(0.01)
    revision = root / "revisions" / "base"
    shutil.rmtree(revision)
    write_checkpoint({"global_step": 0, "state_dict": weights, "decoder_config": state["decoder_config"],
                      "model_signature": state.get("model_signature"),
                      "lit_psion": {"writer": "window init", "parent": digest}}, revision)  # fmt: skip
    pointer = read_json(root / "pointer.json")
    atomic_write_json(root / "pointer.json", {**pointer, "revision": verify_checkpoint(
        root / "revisions" / "base").manifest_sha256})  # fmt: skip


def _edit_program(**changes: object) -> Callable[[Path, Path], None]:
    def edit(root: Path, base: Path) -> None:
        values = read_json(root / "program.json")
        atomic_write_json(root / "program.json", {**values, **changes})
    return edit


@pytest.mark.parametrize("harm", [_swap_revision_0, _edit_program(revision_0="0" * 64),
                                  _edit_program(base={"checkpoint_digest": "1" * 64, "path": "elsewhere"})],
                         ids=["revision 0 swapped", "its record edited", "its base edited"])  # fmt: skip
def test_a_revision_0_that_is_not_the_one_init_made_is_refused_before_any_window(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture, harm: Callable[[Path, Path], None]
) -> None:
    root = new_program(base, tmp_path / "windows", contributors=2)
    assert main(["window", "verify", str(root)]) == 0
    harm(root, base)
    capsys.readouterr()
    for command in (["verify", str(root)], ["plan", str(root)]):
        assert main(["window", *command]) == 5, command
        assert "is not the revision 0 window init made" in capsys.readouterr().err
    assert not (root / "windows").exists(), "no window was planned on it"


def test_a_missing_plan_is_named_as_missing_not_as_no_such_window(active: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    root = Path(shutil.copytree(active, tmp_path / "windows"))
    (root / "windows" / "w-0001" / "plan.json").unlink()
    capsys.readouterr()
    for command in (["verify", str(root)], ["status", str(root)], ["close", str(root), "w-0001"]):
        assert main(["window", *command]) == 5, command
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "plan.json' is missing: w-0001 was planned with it" in line and "no window" not in line, line


@pytest.mark.parametrize(("contributors", "warned"), [(1, True), (2, True), (3, False)])
def test_planning_fewer_contributions_than_the_norm_check_needs_is_warned(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture, contributors: int, warned: bool
) -> None:
    root = new_program(base, tmp_path / "windows", contributors=3)
    capsys.readouterr()
    assert main(["window", "plan", str(root), "--contributors", str(contributors)]) == 0
    err = capsys.readouterr().err
    assert ("delta-norm check needs 3 contributions" in err) is warned, err
    assert f"{contributors} contributor{'s' if contributors > 1 else ''} a window" in err or not warned


def test_planning_over_a_window_only_planned_offers_to_open_it(base: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Closing a planned window abandons it (every slice replay_required): the line said only "close it first"."""
    root = new_program(base, tmp_path / "windows", contributors=3)
    assert main(["window", "plan", str(root)]) == 0
    capsys.readouterr()
    assert main(["window", "plan", str(root)]) == 13
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "is 'planned', not reconciled; open it (window open " in line and "or abandon it: close it" in line
    assert main(["window", "open", str(root), "w-0001"]) == 0
    assert main(["window", "plan", str(root)]) == 13
    assert "open it" not in capsys.readouterr().err
