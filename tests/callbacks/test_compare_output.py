"""``compare --out``: one writer at a time, and a comparison stopped part way leaves the earlier one whole (or no
page at all) and is finished by running it again."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion import report
from lit_psion.cli import main
from lit_psion.core.lock import RunLock
from tests.callbacks import test_reports

two_runs = test_reports.two_runs  # two finished runs, built once for this module too


def _files(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.is_file() and path.name != ".lock"}


def test_a_second_compare_into_the_same_out_is_refused_and_writes_nothing(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two at once both exited 0, leaving one comparison's page over the other's plots."""
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, two_runs), "--out", str(out)]) == 0
    before = _files(out)
    capsys.readouterr()
    with RunLock(out, purpose="compare into it"):
        assert main(["compare", str(two_runs[0]), "--out", str(out)]) == 8
    assert "is locked by" in capsys.readouterr().err and _files(out) == before


def test_a_compare_stopped_part_way_leaves_the_earlier_one_and_runs_again(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C while drawing left the new loss.png beside the earlier page and plots, and the rerun was refused
    ("already holds files compare did not write (such as 'loss.png')")."""
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, two_runs), "--out", str(out)]) == 0
    before = _files(out)
    drawn = report.plot_panel

    def stopped(runs: dict, panel: str, path: Path) -> bool:
        if panel == list(report.PANELS)[1]:
            raise KeyboardInterrupt
        return drawn(runs, panel, path)

    monkeypatch.setattr(report, "plot_panel", stopped)
    assert main(["compare", str(two_runs[0]), "--out", str(out)]) == 130
    assert _files(out) == before  # the earlier comparison, whole
    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(report, "plot_panel", stopped)
    assert main(["compare", str(two_runs[0]), "--out", str(fresh)]) == 130
    assert not (fresh / "index.html").exists()  # no page over half a comparison
    monkeypatch.undo()
    capsys.readouterr()
    for place in (out, fresh):
        assert main(["compare", str(two_runs[0]), "--out", str(place)]) == 0
        page = (place / "index.html").read_text()
        assert two_runs[0].name in page and two_runs[1].name not in page
        assert sorted(p.name for p in place.iterdir()) == sorted([".lock", "index.html", *(
            f"{panel}.png" for panel in report.PANELS if (place / f"{panel}.png").exists())])  # fmt: skip
