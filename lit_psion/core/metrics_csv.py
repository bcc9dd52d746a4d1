"""A run's metrics.csv read by step, as compare, the dashboard and doctor read it (without the plotting stack)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lit_psion.core.errors import EvidenceError
from lit_psion.core.layout import RunLayout

Series = dict[str, list[tuple[int, float]]]
"""metric key -> [(step, value), ...] in step order."""


def read_metrics(run_dir: str | Path) -> Series:
    """Every metric in ``run_dir/metrics.csv`` as (step, value) pairs; empty if there is no file yet.

    Steps count the optimizer steps done, as receipts, checkpoints and ``run.json`` do: the CSV's ``step``
    column (Lightning's) is one less.

    Raises:
        EvidenceError: the file is not the CSV a run writes (not UTF-8, no ``step`` column, a value not a number).
    """
    path = RunLayout.of(run_dir).metrics
    series: Series = {}
    if not path.exists() and not path.is_symlink():
        return series
    try:
        if path.is_symlink() or not path.is_file():  # (doctor fails either: its values are not the run's to show)
            raise ValueError("a symlink" if path.is_symlink() else "not a file")
        with open(path, newline="", encoding="utf-8") as handle:
            text = handle.read()
        text = text if text.endswith("\n") else text[: text.rfind("\n") + 1]  # a row cut short by a kill: not a row
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if "step" not in (reader.fieldnames or ()):  # an empty file, or a header that is not a run's
            header = reader.fieldnames
            raise ValueError(f"its header {header} has no step column" if header else "it is empty")
        for row in reader:
            step = int(row["step"]) + 1  # Lightning writes step n's row at n - 1; receipts count steps done
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in (None, ""):
                    series.setdefault(key, []).append((step, float(value)))
    except (OSError, ValueError, TypeError, KeyError, csv.Error) as error:
        raise EvidenceError(f"{str(path)!r} is not a run's metrics CSV ({one_line(error)}); restore it, or leave "
                            "this run out") from error  # fmt: skip
    return {key: sorted(points) for key, points in series.items()}


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:160] + "..."
