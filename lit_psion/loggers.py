"""``metrics.csv`` in the run directory, continued (not overwritten) when a run resumes."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
from collections.abc import Callable, Mapping
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lit_psion.core import RunLayout, atomic_write_text
from lit_psion.core.errors import FULL_STORAGE, ConfigError, StorageFull
from lit_psion.core.files import unshare


class _ContinuingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as handle:
                self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        """The run directory is expected to hold files already (run.json, config.yaml)."""

    def save(self) -> None:
        """Lightning's save, with the file whole at every moment: a new header (and the first save) rewrites it
        atomically, where Lightning truncates it in place (a kill then left it empty, and the run could not be
        resumed); an append that fails (a full disk) is taken back to the last whole row, and said with the path.
        """
        if not self.metrics:
            return
        path = self.metrics_file_path
        exists, header = os.path.isfile(path), list(self.metrics_keys)
        try:
            if self._record_new_keys() or not exists:
                rows = self._whole_rows(path) if exists else []
                atomic_write_text(path, self._csv(rows + self.metrics, header=True))
            else:
                self._append(path, self._csv(self.metrics, header=False))
        except OSError as error:
            self.metrics_keys = header  # the file's: the next save rewrites it with the new columns
            if error.errno not in FULL_STORAGE:
                raise  # a place that cannot be written, or another fault: said as such by lit_psion_cause
            raise StorageFull(f"writing {path!r} failed: {error.strerror or error}; its rows up to the last whole "
                              "one are kept: free space (or fix the device), then --ckpt_path last") from error
        self.metrics = []

    def _csv(self, rows: list[dict], header: bool) -> str:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys)
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    @staticmethod
    def _whole_rows(path: str) -> list[dict]:
        with open(path, newline="") as handle:
            text = handle.read()
        return list(csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1], newline="")))

    @staticmethod
    def _append(path: str, text: str) -> None:
        data = text.encode()
        unshare(path)  # a run copied with hard links: only this copy's rows grow
        with open(path, "ab", buffering=0) as handle:  # one write, nothing buffered to fail again at close
            size = handle.seek(0, os.SEEK_END)
            try:
                if (written := handle.write(data)) != len(data):
                    raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)")
            except OSError:
                with contextlib.suppress(OSError):
                    handle.truncate(size)
                raise

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
    """A CSVLogger writing ``<save_dir>/<run_id>/metrics.csv`` and appending across resumes.

    Its ``step`` column is the optimizer step a resume drops rows by, so a metric a model or callback logs as
    ``step`` (Lightning then files the row under that value) is refused, as is one logged as ``epoch`` (it would
    replace the epoch Lightning writes in every row); ``watch`` gives it the trainer to see them.
    """

    def __init__(self, save_dir: str | os.PathLike, run_id: str) -> None:
        super().__init__(save_dir=save_dir, name=run_id, version="")
        self._logged: Callable[[], Mapping] = dict

    def watch(self, trainer: Any) -> None:
        self._logged = lambda: trainer.logged_metrics

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for name, what in (("step", "the optimizer step a resume relies on"), ("epoch", "the epoch Lightning writes")):
            if name in (logged := self._logged()):
                value = logged[name].item() if hasattr(logged[name], "item") else logged[name]
                raise ConfigError(f"a metric named {name!r} was logged ({value!r}): in "
                                  f"{RunLayout.of(self.log_dir).metrics} it would replace {what}; log it under "
                                  "another name")  # fmt: skip
        super().log_metrics(metrics, step)

    @property
    @rank_zero_experiment
    def experiment(self) -> _ContinuingWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
