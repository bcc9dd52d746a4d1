"""``metrics.csv`` in the run directory, continued (not overwritten) when a run resumes."""

from __future__ import annotations

import csv
import io
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lit_psion.core import atomic_write_text


class _ContinuingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as handle:
                self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        """The run directory is expected to hold files already (run.json, config.yaml)."""

    def drop_after(self, step: int) -> int | None:
        """Forget rows logged after ``step`` optimizer steps: a resumed run logs those steps again. Returns the
        steps done at the last row kept (None: no row).

        Lightning logs the n-th step's row (and a validation after it) at ``step`` n - 1: the rows a checkpoint
        of ``step`` steps has seen are those below ``step``.
        """
        if not os.path.isfile(self.metrics_file_path):
            return None
        with open(self.metrics_file_path, newline="") as handle:
            text = handle.read()
        if not text.endswith("\n"):  # a row a kill cut short: it is logged again
            text = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(text, newline=""))
        fieldnames, rows = reader.fieldnames or [], [row for row in reader if int(row["step"]) < step]
        lines = [",".join(fieldnames)] + [",".join(row.get(k, "") or "" for k in fieldnames) for row in rows]
        atomic_write_text(self.metrics_file_path, "\n".join(lines) + "\n")
        return max((int(row["step"]) + 1 for row in rows), default=None)


class RunCSVLogger(CSVLogger):
    """A CSVLogger writing ``<save_dir>/<run_id>/metrics.csv`` and appending across resumes."""

    def __init__(self, save_dir: str | os.PathLike, run_id: str) -> None:
        super().__init__(save_dir=save_dir, name=run_id, version="")

    @property
    @rank_zero_experiment
    def experiment(self) -> _ContinuingWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
