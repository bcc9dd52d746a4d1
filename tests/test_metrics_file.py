"""metrics.csv stays whole at every moment: a new header rewrites it atomically, and a failed append is taken back
to the last whole row and said with the file's path."""

from __future__ import annotations

import csv
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.errors import StorageFull
from lit_psion.core.run import read_latest
from lit_psion.loggers import RunCSVLogger
from tests.helpers import TINY, fit, subprocess_env


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_new_header_that_fails_midway_leaves_the_rows_written_before(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning truncated the file in place to rewrite its header: a kill (here, a failing write) inside that
    rewrite left it empty or header-only, and the run could not be resumed."""
    logger = RunCSVLogger(tmp_path, "run")
    logger.log_metrics({"train/loss": 2.0}, step=0)
    logger.log_metrics({"train/loss": 1.5}, step=1)
    logger.save()
    path = tmp_path / "run" / "metrics.csv"
    before = path.read_bytes()

    def failing_writerows(self: csv.DictWriter, rows: list) -> None:
        raise OSError(27, "File too large")

    logger.log_metrics({"train/loss": 1.0, "val/loss": 1.2}, step=2)  # a new column: the header is rewritten
    with monkeypatch.context() as patch:
        patch.setattr(csv.DictWriter, "writerows", failing_writerows)
        with pytest.raises(StorageFull, match=f"writing {str(path)!r} failed: File too large"):
            logger.save()
    assert path.read_bytes() == before
    logger.save()  # the rows are still held: written whole once writing works again
    assert [(r["step"], r["train/loss"], r["val/loss"]) for r in _rows(path)] == [
        ("0", "2.0", ""), ("1", "1.5", ""), ("2", "1.0", "1.2")]  # fmt: skip


def _limit_file_size(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_at_metrics_csv_names_it_and_keeps_whole_rows(tmp_path: Path) -> None:
    """It said 'reading or writing failed: File too large', naming no file, and left a row cut mid-number."""
    command = [sys.executable, "-m", "lit_psion", "fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path),
               "--trainer.max_steps", "40", "--checkpoint.every_n_train_steps", "1000", "--receipts.every_n_steps",
               "1000", "--trainer.val_check_interval", "100", "--dashboard.enabled", "false",
               "--trainer.log_every_n_steps", "1"]  # fmt: skip
    limit = 4096  # bytes: above every other file this fit writes before its end, below the metrics of 40 steps
    warm = [*command[:-8], "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path / "warm")]
    assert subprocess.run(warm, capture_output=True, timeout=300, env=subprocess_env()).returncode == 0  # caches tokens
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=subprocess_env(),
                          preexec_fn=lambda: _limit_file_size(limit))  # fmt: skip
    assert done.returncode == 6, done.stderr[-2000:]
    (run_dir,) = tmp_path.glob("2*")
    assert f"writing {str(run_dir / 'metrics.csv')!r} failed: " in done.stderr, done.stderr[-2000:]
    text = (run_dir / "metrics.csv").read_text()
    assert text.endswith("\n") and len(text.encode()) <= limit
    steps = [int(row["step"]) for row in _rows(run_dir / "metrics.csv")]
    assert steps == list(range(len(steps)))
    assert read_json(run_dir / "run.json")["failure_class"] == "storage_full"


class LogsAStep(Callback):
    """A callback logging its own metric named ``name`` (``step``: Lightning files the row under its value;
    ``epoch``: it replaces the epoch Lightning writes)."""

    def __init__(self, name: str = "step") -> None:
        self.name = name

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        pl_module.log(self.name, 1000.0 + trainer.global_step)


@pytest.mark.parametrize("name", ["step", "epoch"])
def test_a_metric_named_step_is_refused_before_it_files_a_row_under_its_value(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str
) -> None:
    """Lightning took a logged ``step`` as the row's step: metrics.csv's rows said steps 1003.. and a resume, which
    drops the rows after its checkpoint's step by that column, kept or dropped the wrong ones. A logged ``epoch``
    replaced the epoch column without a word."""
    args = ["fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "6",
            "--trainer.log_every_n_steps", "1", f"--trainer.callbacks+={__name__}.LogsAStep",
            f"--trainer.callbacks.name={name}"]  # fmt: skip
    assert main(args) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion:")]
    assert f"a metric named {name!r} was logged (1001.0): in " in line and "log it under another name" in line
    assert "//metrics.csv" not in line
    run = tmp_path / read_latest(tmp_path)
    assert not (run / "metrics.csv").exists(), "refused at the first row it would have misfiled"
    assert read_json(run / "run.json")["status"] == "failed" and main(["receipts", "verify", str(run)]) == 0


def test_the_step_a_fit_stops_on_gets_its_metrics_row(tmp_path: Path) -> None:
    """docs/cli.md: a row every log_every_n_steps steps and on the step a fit stops on. Lightning writes the latter
    only for a stop through should_stop, not for max_steps, so compare's final train/loss was a stale one."""
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "6",
               "--trainer.log_every_n_steps", "4") == 0  # fmt: skip
    rows = list(csv.DictReader((tmp_path / read_latest(tmp_path) / "metrics.csv").open()))
    train = [(row["step"], bool(row["train/loss"]), bool(row["train/lr"])) for row in rows if row["train/loss"]]
    assert train == [("3", True, True), ("5", True, True)]


def test_a_fit_without_a_logger_does_not_name_a_metrics_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--trainer.fast_dev_run true` turns Lightning's logger off, and the summary named a metrics.csv that was
    never written."""
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.fast_dev_run", "true") == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("metrics")]
    assert line.split() == ["metrics", "none", "(no", "logger)"]
    assert not (tmp_path / read_latest(tmp_path) / "metrics.csv").exists()


def test_a_fit_shorter_than_the_logging_interval_names_its_metrics_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """With max_steps below log_every_n_steps the only row is written after the summary, which said "none (no
    logger)" of a metrics.csv that then held it."""
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3",
               "--trainer.log_every_n_steps", "10") == 0  # fmt: skip
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("metrics")]
    metrics = tmp_path / read_latest(tmp_path) / "metrics.csv"
    assert line.split() == ["metrics", str(metrics)]
    assert [row["step"] for row in csv.DictReader(metrics.open()) if row["train/loss"]] == ["2"]
