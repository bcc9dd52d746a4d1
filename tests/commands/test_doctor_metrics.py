"""``doctor`` and ``compare`` agree on a run's metrics.csv: a value that is not a number fails both."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import RunLayout
from lit_psion.core.run import read_latest
from tests.helpers import fit


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    root = tmp_path_factory.mktemp("metrics")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "12") == 0  # validations at 6, 12
    return RunLayout(root, read_latest(root))


METRIC_CELLS = [  # (what the cell of a column at the first row with a train/loss becomes, doctor's verdict,
    # compare's exit)
    ("abc", "train/loss", "the value of 'train/loss' at step", 5),
    ("0.5,extra", "train/loss", "metrics.csv:", 5),  # a cell more: the row's values shift (one of them is named)
    ("nan", "telemetry/grad_norm", None, 0),  # Lightning writes a NaN metric so: a number, which no receipt records
    ("nan", "train/loss", "train/loss at step 1 is nan, but its receipt records", 5),  # one a receipt records
]


@pytest.mark.parametrize(("cell", "column", "said", "code"), METRIC_CELLS,
                         ids=["abc", "a cell more", "nan", "nan where a receipt records a loss"])  # fmt: skip
def test_doctor_fails_a_metric_value_that_compare_cannot_read_and_passes_one_it_can(
    completed: RunLayout, tmp_path: Path, capsys: pytest.CaptureFixture, cell: str, column: str, said: str | None,
    code: int,
) -> None:
    """A value that is not a number was doctor's "ok" and compare's exit 5; they agree now, as they do on a value
    its receipt records otherwise."""
    run = tmp_path / completed.run_id
    shutil.copytree(completed.run_dir, run)
    lines = (run / "metrics.csv").read_text().splitlines()
    header, rows = lines[0].split(","), lines[1:]
    at = next(i for i, row in enumerate(rows) if row.split(",")[header.index("train/loss")])
    cells = rows[at].split(",")
    cells[header.index(column)] = cell
    rows[at] = ",".join(cells)
    (run / "metrics.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    capsys.readouterr()
    assert main(["doctor", str(run)]) == (5 if said else 0)
    out = capsys.readouterr().out
    assert (said is None) or any(line.startswith("FAIL metrics.csv:") and said in line for line in out.splitlines())
    assert main(["compare", str(run), str(completed.run_dir), "--out", str(tmp_path / "cmp")]) == code


def _append_a_row(csv_step: int) -> callable:
    def edit(header: list[str], rows: list[str]) -> list[str]:
        cells = [""] * len(header)
        cells[header.index("step")], cells[header.index("train/loss")] = str(csv_step), "0.01"
        cells[header.index("epoch")] = "0"
        return [*rows, ",".join(cells)]
    return edit


def _blank_the_last_validation(header: list[str], rows: list[str]) -> list[str]:
    column = header.index("val/loss")
    at = max(i for i, row in enumerate(rows) if row.split(",")[column])
    cells = rows[at].split(",")
    cells[column] = ""
    return [*rows[:at], ",".join(cells), *rows[at + 1:]]


FORGED_ROWS = [  # (the edit, what doctor's line says): a completed run's rows are all written, all receipted
    (_append_a_row(99), "row at step 100, but the run completed at step 12"),
    (_append_a_row(-1), "row at step 0, but the run completed at step 12"),
    (_blank_the_last_validation, "has no val/loss row at step 12, which its eval receipt records"),
]


@pytest.mark.parametrize(("edit", "said"), FORGED_ROWS, ids=["a row past the end", "a row before the start",
                                                              "the last validation's row deleted"])  # fmt: skip
def test_a_completed_runs_rows_past_its_end_or_missing_a_validation_fail_doctor_and_compare(
    completed: RunLayout, tmp_path: Path, capsys: pytest.CaptureFixture, edit, said: str
) -> None:
    """Each passed both, and compare showed the forged final value as "receipts verified"."""
    run = tmp_path / completed.run_id
    shutil.copytree(completed.run_dir, run)
    lines = (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.csv").write_text("\n".join([lines[0], *edit(lines[0].split(","), lines[1:])]) + "\n")
    capsys.readouterr()
    assert main(["doctor", str(run)]) == 5
    assert any(line.startswith("FAIL metrics.csv:") and said in line for line in capsys.readouterr().out.splitlines())
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 5
