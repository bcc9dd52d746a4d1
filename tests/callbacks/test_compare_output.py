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


@pytest.mark.parametrize("values", [("1e308", "-1e308"), ("1.7e308", "3")], ids=["both ends", "one huge"])
def test_values_no_axis_can_span_are_left_out_of_the_plots(
    two_runs: tuple[Path, Path], tmp_path: Path, values: tuple[str, str]
) -> None:
    """Two cells of 1e308 and -1e308 (finite, but an axis between them overflows): compare exit 1 (matplotlib's
    "arange: cannot compute length"), after the fit's own warning had recommended it. (In train/loss, which the
    receipts record, such cells are now an edit: a throughput column stands in, which no receipt records.)"""
    import csv
    import shutil

    copy = tmp_path / two_runs[0].name
    shutil.copytree(two_runs[0], copy)
    with (copy / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    trained = [row for row in rows if row.get("telemetry/tokens_per_s")]
    for row, value in zip(trained[:2], values, strict=True):
        row["telemetry/tokens_per_s"] = value
    with (copy / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["compare", str(copy), str(two_runs[1]), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "throughput.png").is_file()


EDITED_CELLS = [("val/loss", -1), ("train/loss", -1), ("val/loss", 0), ("train/loss", 0)]  # (metric, which row)


@pytest.mark.parametrize(("metric", "index"), EDITED_CELLS, ids=["last val", "last train", "first val", "first train"])
def test_a_value_edited_in_metrics_csv_is_not_shown_as_vouched_for(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, metric: str, index: int
) -> None:
    """metrics.csv carries no digest: its last val/loss edited to 0.1234 was shown beside "receipts verified",
    though the step's eval receipt records another value; an earlier row edited was drawn in the plots (a dip that
    never was), and doctor passed both."""
    import csv
    import shutil

    copy = tmp_path / two_runs[0].name
    shutil.copytree(two_runs[0], copy)
    with (copy / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    [row for row in rows if row.get(metric)][index][metric] = "0.1234"
    with (copy / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    assert main(["compare", str(copy), str(two_runs[1]), "--out", str(tmp_path / "cmp")]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert f"metrics.csv's {metric} at step" in err[-1] and "is 0.1234, but its receipt records" in err[-1], err
    assert main(["doctor", str(copy)]) == 5
    assert f"FAIL metrics.csv: metrics.csv's {metric} at step" in capsys.readouterr().out


@pytest.mark.parametrize("edit", ["config.yaml", "tokenizer.json"])
def test_an_edited_config_is_not_shown_as_part_of_a_vouched_comparison(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, edit: str
) -> None:
    """config.yaml edited after the fit (n_layer 2 -> 9) was shown in the config table beside "receipts verified",
    while doctor failed it against run.json's digest."""
    import shutil

    copy = tmp_path / two_runs[0].name
    shutil.copytree(two_runs[0], copy)
    text = (copy / edit).read_text()
    (copy / edit).write_text(text.replace("n_layer: 2", "n_layer: 9") if edit == "config.yaml" else text + " ")
    capsys.readouterr()
    assert main(["compare", str(copy), str(two_runs[1]), "--out", str(tmp_path / "cmp")]) == 5
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert f"{edit}:" in err[-1] and "its receipts verify, but a record its column shows is not" in err[-1], err
    assert "verified; records FAIL" in out and "FAILS" not in out, "the chain verified: the table said it FAILS"


@pytest.mark.parametrize("made", ["a directory", "a symlink"])
def test_a_metrics_csv_that_is_not_a_file_is_not_compared_as_an_empty_one(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, made: str
) -> None:
    """A metrics.csv replaced by a directory was read as no metrics (exit 0) while doctor failed it."""
    import shutil

    copy = tmp_path / two_runs[0].name
    shutil.copytree(two_runs[0], copy)
    metrics = copy / "metrics.csv"
    if made == "a directory":
        metrics.unlink()
        metrics.mkdir()
    else:
        metrics.rename(tmp_path / "elsewhere.csv")
        metrics.symlink_to(tmp_path / "elsewhere.csv")
    capsys.readouterr()
    assert main(["compare", str(copy), str(two_runs[1]), "--out", str(tmp_path / "cmp")]) == 5
    assert "is not a run's metrics CSV" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_a_validation_score_no_eval_receipt_records_is_not_shown_as_vouched_for(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A val/loss of 0.1 written into a row at a step no validation ran (by hand, or by a hook that logged a
    validation score's name while training) was shown as the run's, beside "receipts verified": only a value its
    step's receipt records otherwise was caught."""
    import csv
    import shutil

    copy = tmp_path / two_runs[0].name
    shutil.copytree(two_runs[0], copy)
    with (copy / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows.append({**{key: "" for key in rows[0]}, "epoch": rows[-1]["epoch"], "step": str(int(rows[-1]["step"]) - 2),
                 "val/loss": "0.1"})  # fmt: skip
    with (copy / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    assert main(["compare", str(copy), "--out", str(tmp_path / "cmp")]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert "metrics.csv's val/loss at step" in err[-1] and "is 0.1, but no eval receipt records val/loss" in err[-1]
