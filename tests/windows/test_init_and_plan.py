"""A `window init` killed part way leaves a program a rerun of init finishes, and a plan for more contributors than
the slices left names the number it can plan."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.windows.founding import init_program
from lit_psion.windows.program import Program
from lit_psion.windows.settings import ProgramSettings
from tests.windows.helpers import SETTINGS, new_program, write_settings


def _init(root: Path, settings: Path, base: Path) -> int:
    return main(["window", "init", str(root), "--config", str(settings), "--base", str(base)])


def test_a_killed_init_is_finished_by_running_it_again(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Killed between program.json and pointer.json, init left a program no command could use or repair: a rerun
    said it already held one (exit 2), plan, status and verify that pointer.json was missing (exit 5)."""
    settings, root = write_settings(tmp_path / "settings.yaml"), tmp_path / "windows"

    class Killed(BaseException):
        """SIGKILL: nothing after this write runs."""

    def killed(*args: object) -> None:
        raise Killed

    monkeypatch.setattr(Program, "move_pointer", killed)
    with pytest.raises(Killed):
        init_program(root, ProgramSettings.from_mapping(
            json.loads(settings.read_text())["window"], "settings"), base)  # fmt: skip
    monkeypatch.undo()
    assert not (root / "program.json").exists()  # the commit point is the last write
    capsys.readouterr()
    assert main(["window", "status", str(root)]) == 2
    assert "holds no window program" in capsys.readouterr().err
    assert _init(root, settings, base) == 0
    assert main(["window", "run", str(root), "--contributors", "1"]) == 0
    assert main(["window", "verify", str(root)]) == 0


def test_a_program_an_earlier_init_left_without_its_pointer_is_finished_by_init(
        base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """What an init that wrote program.json before the pointer left when killed between the two."""
    settings = write_settings(tmp_path / "settings.yaml")
    root = new_program(base, tmp_path / "windows")
    (root / "pointer.json").unlink()
    capsys.readouterr()
    for command in ("plan", "status", "verify"):
        assert main(["window", command, str(root)]) == 5
        assert "was cut short; run the same window init again to finish it" in capsys.readouterr().err
    assert _init(root, settings, base) == 0
    assert main(["window", "verify", str(root)]) == 0
    # a program that has windows is never re-initialised over, with or without its program.json
    assert main(["window", "plan", str(root)]) == 0
    assert _init(root, settings, base) == 2
    assert "already holds a window program" in capsys.readouterr().err
    (root / "program.json").unlink()
    assert _init(root, settings, base) == 5
    assert "program.json' is missing but" in capsys.readouterr().err


def test_too_many_contributors_names_how_many_the_slices_left_allow(
        base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """It said to lower slice_samples, which is fixed at init (editing it is exit 5)."""
    root = new_program(base, tmp_path / "windows")
    capsys.readouterr()
    assert main(["window", "run", str(root), "--contributors", "1000"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lower slice_samples" not in err[0], err
    allowed = re.search(r"plan at most (\d+) \(--contributors \1\)", err[0])
    assert allowed, err
    assert main(["window", "plan", str(root), "--contributors", allowed.group(1)]) == 0
    assert main(["window", "close", str(root), "w-0001"]) == 0  # nobody contributed: every slice is replayed
    capsys.readouterr()
    assert main(["window", "plan", str(root), "--contributors", "1"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "this program's slices are used up, or init a new program with more text" in err[0], err


def test_init_takes_the_programs_text_from_the_command_line(base: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """configs/window_lora.yaml names ../shared/data/tinyshakespeare.txt, read from where init runs; a clone elsewhere
    could only copy and edit the preset (`--window.data.files` was an unrecognized argument)."""
    settings = write_settings(tmp_path / "settings.yaml", data={**SETTINGS["data"], "files": "../nowhere/text.txt"})
    root = tmp_path / "windows"
    assert _init(root, settings, base) == 3
    assert "nowhere/text.txt" in capsys.readouterr().err and not root.exists()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(Path("fixtures/tiny_corpus.txt").read_text())
    assert main(["window", "init", str(root), "--config", str(settings), "--base", str(base), "--data.files",
                 str(corpus)]) == 0  # fmt: skip
    assert Program(root).settings().data["files"] == [str(corpus.resolve())]
    assert main(["window", "plan", str(root)]) == 0


def test_text_the_bases_tokenizer_does_not_know_is_one_line_naming_no_scratch_file(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:  # fmt: skip
    """A warning named a temporary copy of the tokenizer (gone when read) before the refusal said it again."""
    corpus = tmp_path / "other.txt"
    corpus.write_text("\n\n".join("ЖЗИЙ КЛМН ОПРС ТУФХ " * 20 for _ in range(12)))
    root = tmp_path / "windows"
    assert _init(root, write_settings(tmp_path / "settings.yaml", data={**SETTINGS["data"], "files": str(corpus)}),
                 base) == 3  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion:")]
    assert len(lines) == 1 and "token(s) the base's tokenizer does not know (<|unk|>)" in lines[0], lines
    assert not root.exists()


@pytest.mark.parametrize("log", ["emptied", "torn"])
def test_a_first_planning_cut_short_is_planned_again(base: Path, tmp_path: Path, log: str) -> None:
    """The settings check read w-0001's planning receipt before a planning cut short was cleared: a full disk that
    left its log empty (or a kill that tore it) made plan, status and verify exit 5 until w-0001 was removed by hand."""
    root = new_program(base, tmp_path / "windows", contributors=1)
    assert main(["window", "plan", str(root)]) == 0
    window = root / "windows" / "w-0001"
    (window / "window.json").unlink()
    receipts = window / "receipts.jsonl"
    receipts.write_bytes(b"" if log == "emptied" else receipts.read_bytes()[:40])
    assert main(["window", "status", str(root)]) == 0
    assert main(["window", "plan", str(root)]) == 0
    assert main(["window", "verify", str(root)]) == 0


def test_an_edited_planning_receipt_is_named_not_a_crash(base: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    root = new_program(base, tmp_path / "windows", contributors=1)
    assert main(["window", "plan", str(root)]) == 0
    receipts = root / "windows" / "w-0001" / "receipts.jsonl"
    first, *rest = receipts.read_text().splitlines(keepends=True)
    line = json.loads(first)
    line["body"]["detail"] = "edited"
    receipts.write_text(json.dumps(line) + "\n" + "".join(rest))
    capsys.readouterr()
    assert main(["window", "verify", str(root)]) == 5
    assert "edited" in capsys.readouterr().err


@pytest.mark.parametrize("changes", [{"slice_samples": 10_000_000}, {"contributors": 10_000}],
                         ids=["a slice past the data", "more contributors than slices"])  # fmt: skip
def test_init_refuses_data_too_small_for_one_window(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    changes: dict) -> None:  # fmt: skip
    """init made the program; its first plan then said "0 fresh slice(s) ... this program's slices are used up"."""
    capsys.readouterr()
    assert _init(tmp_path / "p", write_settings(tmp_path / "s.yaml", **changes), base) == 3
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.search(r"the program's data has \d+ training samples, \d+ slice\(s\) of slice_samples \d+, fewer than "
                     r"the \d+ contributors a window needs", line), line
    assert not (tmp_path / "p").exists()
