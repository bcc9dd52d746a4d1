"""Dashboard, ``compare`` and the W&B preset: files a user opens after (or during) a run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.run import read_latest
from lit_psion.report import PANELS, TIMELINE, axes_rows, read_metrics, timeline_events, write_plots
from tests import helpers
from tests.helpers import TINY, callbacks_config, fit_subprocess
from tests.test_bad_input import one_error_line


def fit(*args: str, config: str = TINY) -> int:  # one that draws its dashboard (fixtures/tiny.yaml leaves it off)
    return helpers.fit("--dashboard.enabled", "true", *args, config=config)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reports")
    assert fit("--trainer.default_root_dir", str(root / "a")) == 0
    assert fit("--trainer.default_root_dir", str(root / "b"), "--model.init_args.optimizer.lr", "0.01") == 0
    return root / "a" / read_latest(root / "a"), root / "b" / read_latest(root / "b")


def _png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dashboard_shows_the_finished_run(two_runs: tuple[Path, Path]) -> None:
    run = two_runs[0]
    page = (run / "dashboard" / "index.html").read_text()
    for panel in set(PANELS) - {"transactions"}:  # a run without a transactional strategy has no commit rate
        assert _png(run / "dashboard" / f"{panel}.png"), panel
        assert f'src="{panel}.png"' in page  # relative: opens from the file system
    assert not (run / "dashboard" / "transactions.png").exists()
    record = read_json(run / "run.json")
    assert "<td>completed</td>" in page and record["receipts_head"] in page
    final_loss = read_metrics(run)["val/loss"][-1][1]
    assert f"{final_loss:.6g}" in page
    assert _png(run / "dashboard" / TIMELINE) and f'src="{TIMELINE}"' in page
    lines = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    durable = [(r["body"]["step"], r["body"]["checkpoint"]) for r in lines
               if r["kind"] == "checkpoint" and r["body"]["durability"] == "durable"]  # fmt: skip
    assert durable and [(step, label) for step, row, label in timeline_events(run) if row == "checkpoint"] == durable


class FailAtTrainEnd(Callback):
    """Raises once training ends (as a failing final checkpoint write would), after the last validation."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise RuntimeError("injected failure at the end of training")


def test_a_fit_that_fails_after_its_last_validation_still_has_its_dashboard(tmp_path: Path) -> None:
    """The last validation leaves the page to the end of the fit; Lightning skips teardown after an exception,
    so the page is drawn when the exception passes, with the status the run ended in."""
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "4",
               "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "1",
               "--trainer.callbacks+=tests.callbacks.test_reports.FailAtTrainEnd") == 14  # fmt: skip
    run = tmp_path / read_latest(tmp_path)
    page = (run / "dashboard" / "index.html").read_text()
    assert _png(run / "dashboard" / "loss.png")
    assert f"{read_metrics(run)['val/loss'][-1][1]:.6g}" in page  # the validation at the last step is on it
    assert "<td>failed</td>" in page and read_json(run / "run.json")["status"] == "failed"


class FailAtStep(Callback):
    """Raises in the training step after step 6, or pauses there (a KeyboardInterrupt, as Ctrl-C is)."""

    def __init__(self, pause: bool = False) -> None:
        self.pause = pause

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == 6:
            raise KeyboardInterrupt if self.pause else RuntimeError("injected failure in step 7")


@pytest.mark.parametrize(("pause", "status", "code"), [(False, "failed", 14), (True, "paused", 130)])
def test_a_fit_stopped_between_validations_shows_how_it_ended(tmp_path: Path, pause: bool, status: str,
                                                              code: int) -> None:  # fmt: skip
    """The page the validation at step 4 drew said the run was active; the one left behind says how it ended."""
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "8",
               "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "1",
               "--trainer.callbacks+=tests.callbacks.test_reports.FailAtStep",
               f"--trainer.callbacks.pause={str(pause).lower()}") == code  # fmt: skip
    run = tmp_path / read_latest(tmp_path)
    assert read_json(run / "run.json")["status"] == status
    page = (run / "dashboard" / "index.html").read_text()
    assert f"<td>{status}</td>" in page and "<td>active</td>" not in page


def test_plots_count_steps_as_the_receipts_and_checkpoints_do(two_runs: tuple[Path, Path]) -> None:
    """metrics.csv's step column is Lightning's (one less than the steps done); the plots' axis was too."""
    run = two_runs[0]
    chain = [json.loads(line)["body"] for line in (run / "receipts.jsonl").read_text().splitlines()]
    last_step = max(receipt["step_out"] for receipt in chain if "step_out" in receipt)
    assert read_metrics(run)["train/loss"][-1][0] == last_step == read_json(run / "run.json")["global_step"]


def test_each_norm_gets_its_own_axes_and_other_panels_share_one(two_runs: tuple[Path, Path]) -> None:
    keys = list(PANELS["norms"][1])
    assert axes_rows("norms", keys) == [[key] for key in keys]  # param norm ~70 next to grad norm ~1
    assert axes_rows("loss", ["train/loss", "val/loss"]) == [["train/loss", "val/loss"]]
    dashboard = two_runs[0] / "dashboard"
    assert _png_height(dashboard / "norms.png") > 1.5 * _png_height(dashboard / "loss.png")  # three stacked axes


def _png_height(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[20:24], "big")  # the IHDR chunk's height


def test_the_timeline_skips_a_torn_last_line_and_places_stepless_events_at_the_chain_step(tmp_path: Path) -> None:
    receipts = [
        {"kind": "trainer_step", "body": {"step_in": 6, "step_out": 7}},
        {"kind": "membership", "body": {"change": "left", "world_size": 1}},
        {"kind": "policy_promotion", "body": {"decision": "hold"}},
        {"kind": "transaction", "body": {"step": 8, "decision": "commit"}},
        {"kind": "growth", "body": {"step": 9, "action": "split"}},
    ]
    text = "".join(json.dumps(r) + "\n" for r in receipts) + '{"kind": "checkpoint", "bo'
    (tmp_path / "receipts.jsonl").write_text(text)
    assert timeline_events(tmp_path) == [(7, "membership", "left -> world 1"), (7, "hold", ""), (9, "growth", "split")]


def test_compare_prints_the_config_diff_and_final_metrics(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, two_runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"model\.init_args\.optimizer\.lr\s*│\s*0\.003\s*│\s*0\.01", printed), printed
    for run in two_runs:  # each final value with the step it was taken at
        step, value = read_metrics(run)["val/loss"][-1]
        said = f"{value:.5g} (step {step})"
        assert said in printed and said in (out / "index.html").read_text()
    assert _png(out / "loss.png") and 'src="loss.png"' in (out / "index.html").read_text()


def test_compare_writes_only_into_a_new_or_empty_directory_or_over_an_earlier_comparison(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The default --out is ./compare: a user's own compare/ (or any --out with files in it) had its loss.png and
    index.html overwritten without a word."""
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, two_runs), "--out", str(out)]) == 0
    (out / "transactions.png").write_bytes((out / "loss.png").read_bytes())  # a panel this comparison does not draw
    assert main(["compare", str(two_runs[0]), "--out", str(out)]) == 0  # an earlier comparison: replaced
    assert str(two_runs[1].name) not in (out / "index.html").read_text() and not (out / "transactions.png").exists()
    capsys.readouterr()
    for holds in ("notes.txt", "loss.png"):  # a user's file, or a user's PNG of a panel's name beside no page
        mine = tmp_path / f"mine-{holds}"
        mine.mkdir()
        (mine / holds).write_text("my own")
        assert main(["compare", *map(str, two_runs), "--out", str(mine)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"already holds files compare did not write (such as {holds!r})" in line
        assert [entry.name for entry in mine.iterdir()] == [holds] and (mine / holds).read_text() == "my own"
    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text("<html><title>my page</title></html>")  # not a comparison's page
    assert main(["compare", str(two_runs[0]), "--out", str(page)]) == 2
    assert (page / "index.html").read_text() == "<html><title>my page</title></html>"


TAMPERINGS = {
    "a loss edited": lambda log: log.write_text(log.read_text().replace('"loss": ', '"loss": 1', 1)),
    "a torn last line": lambda log: log.write_bytes(log.read_bytes()[:-40]),
    "deleted": lambda log: log.unlink(),
}


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_compare_says_which_runs_receipts_do_not_verify(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, tamper: Any
) -> None:
    """compare printed run.json's head for a run whose chain fails `receipts verify` and exited 0, though the docs'
    failure classes say compare reports it: it still compares, marks the run, and exits 5 naming it."""
    copy = tmp_path / two_runs[1].name
    shutil.copytree(two_runs[1], copy)
    capsys.readouterr()
    assert main(["compare", str(two_runs[0]), "--out", str(tmp_path / "clean")]) == 0
    assert re.search(r"receipts\s*│\s*verified", capsys.readouterr().out)
    tamper(copy / "receipts.jsonl")
    assert main(["compare", str(two_runs[0]), str(copy), "--out", str(tmp_path / "cmp")]) == 5
    out, err = capsys.readouterr()
    assert re.search(r"receipts\s*│\s*verified\s*│\s*FAILS", out), out
    assert one_error_line(err).startswith(f"lit_psion: error: {copy}: its receipts do not verify"), err
    assert "FAILS" in (tmp_path / "cmp" / "index.html").read_text()


def test_a_metrics_row_cut_short_by_a_kill_is_not_read_as_a_value(two_runs: tuple, tmp_path: Path, capsys) -> None:
    """A kill mid-row leaves an unterminated last line: compare showed its cut number (3.116 of 3.11687) as the run's
    final value, or refused the file, while doctor and a resume took it. The rows before it are what was written; a
    completed run writes every row before its seal, so its lost last validation is named (a kill cannot cut it)."""
    copy = tmp_path / two_runs[0].name
    shutil.copytree(two_runs[0], copy)
    data = (copy / "metrics.csv").read_bytes()
    last_row = data[data.rstrip(b"\n").rfind(b"\n") + 1 :]
    (copy / "metrics.csv").write_bytes(data[: len(data) - len(last_row)])
    before = read_metrics(copy)  # every row but the last
    assert before != read_metrics(two_runs[0])
    for cut in (3, len(last_row) // 2, len(last_row) - 4):
        (copy / "metrics.csv").write_bytes(data[: len(data) - cut])
        assert read_metrics(copy) == before
    capsys.readouterr()
    assert main(["compare", str(copy), "--out", str(tmp_path / "cmp")]) == 5
    assert "metrics.csv has no val/loss row at step" in capsys.readouterr().err


def test_compare_refuses_a_path_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_wandb_offline_run_holds_the_config_and_evidence_digests(tmp_path: Path) -> None:
    result = fit_subprocess("--config", "configs/overlays/wandb.yaml", "--trainer.default_root_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / read_latest(tmp_path)
    (stream,) = run.glob(f"wandb/offline-run-*-{run.name}/run-{run.name}.wandb")  # W&B id = lit_psion run id
    data = stream.read_bytes()
    record, pointer = read_json(run / "run.json"), read_json(run / "checkpoints" / "pointer.json")
    manifest = read_json(run / "checkpoints" / pointer["checkpoint"] / "manifest.json")
    for key, value in [
        ("lit_psion/receipts_head", record["receipts_head"]),
        ("lit_psion/checkpoint_manifest_sha256", pointer["manifest_sha256"]),
        ("lit_psion/checkpoint_weights_sha256", manifest["files"]["model.safetensors"]["sha256"]),
        ("lit_psion/data_manifest_digest", record["data_manifest_digest"]),
        ("lit_psion/status", "completed"),
    ]:
        assert key.encode() in data and value.encode() in data, key
    chain = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    durable = [r["digest"] for r in chain if r["kind"] == "checkpoint" and r["body"]["durability"] == "durable"]
    assert len(durable) >= 2 and all(digest.encode() in data for digest in durable)  # each pinned as it was made
    assert b"tiny_corpus.txt" in data  # the resolved config was logged
    assert b"train/loss" in data and b"val/loss" in data  # the metrics, though W&B joins only at training start


STOPS = [("diverged", 7, ["--model.init_args.optimizer.lr", "1e12", "--model.init_args.optimizer.warmup_steps", "0",
                           "--trainer.gradient_clip_val", "0"]),
         ("paused", -15, ["--config", "SIGTERM"])]  # fmt: skip


@pytest.mark.parametrize(("case", "code", "args"), STOPS, ids=[case for case, _, _ in STOPS])
def test_the_wandb_summary_of_a_stopped_run_is_its_final_record(tmp_path: Path, case: str, code: int,
                                                                 args: list[str]) -> None:  # fmt: skip
    """It was written before the failure's receipt and run.json: W&B said step 0 (a diverged run) and an earlier
    receipt head than run.json's (both)."""
    if "SIGTERM" in args:
        args = ["--config", callbacks_config(tmp_path / "term.json", ("SigtermAt", {"step": 4}))]
    result = fit_subprocess("--config", "configs/overlays/wandb.yaml", "--trainer.default_root_dir", str(tmp_path),
                            "--trainer.max_steps", "8", *args)  # fmt: skip
    assert result.returncode in (code, 128 - code), result.stderr[-2000:]
    run = tmp_path / read_latest(tmp_path)
    (stream,) = run.glob(f"wandb/offline-run-*-{run.name}/run-{run.name}.wandb")
    data, record = stream.read_bytes(), read_json(run / "run.json")
    assert record["status"] in ("failed", "paused") and record["receipts_head"].encode() in data
    assert data.rfind(b'"' + record["status"].encode() + b'"') > data.rfind(b'"active"')


def test_the_wandb_summary_of_a_run_completed_by_a_zero_step_resume_is_its_final_record(tmp_path: Path) -> None:
    """Killed after its seal, the run is completed by a resume that trains nothing: Lightning skips
    on_train_start, where W&B joins, so the summary kept the killed fit's `active` and an earlier head."""
    overlay = ("--config", "configs/overlays/wandb.yaml", "--trainer.default_root_dir", str(tmp_path),
               "--trainer.max_steps", "6")  # fmt: skip
    killed = fit_subprocess(*overlay, "--config", callbacks_config(tmp_path / "kill.json", ("KillAfterSeal", {})))
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = fit_subprocess(*overlay, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run = tmp_path / read_latest(tmp_path)
    record = read_json(run / "run.json")
    assert record["status"] == "completed"
    data = b"".join(path.read_bytes() for path in run.glob(f"wandb/offline-run-*-{run.name}/run-{run.name}.wandb"))
    assert record["receipts_head"].encode() in data


def test_wandb_settings_w_and_b_would_refuse_or_ignore_are_one_line(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """A project name W&B refuses was exit 1 at training start; a second WandbLogger silently logged into the first
    one's run, while config.yaml recorded two projects; an id of the user's made every fit log into one W&B run."""
    overlay = ("--config", "configs/overlays/wandb.yaml", "--trainer.default_root_dir", str(tmp_path))
    assert fit(*overlay, "--trainer.logger.init_args.project", "team/run") == 2
    assert "trainer.logger.init_args.project 'team/run' holds '/', which W&B refuses" in capsys.readouterr().err
    second = tmp_path / "second.yaml"
    second.write_text("trainer:\n  logger:\n    - class_path: lightning.pytorch.loggers.WandbLogger\n      init_args: "
                      "{project: a}\n    - class_path: lightning.pytorch.loggers.WandbLogger\n      init_args: "
                      "{project: b}\n")  # fmt: skip
    assert fit("--config", str(second), "--trainer.default_root_dir", str(tmp_path)) == 2
    assert "trainer.logger holds 2 WandbLoggers (projects 'a', 'b')" in capsys.readouterr().err
    for key in ("id", "version"):  # every fit would log into W&B run myid
        assert fit(*overlay, f"--trainer.logger.init_args.{key}", "myid") == 2
        assert f"trainer.logger.init_args.{key} 'myid': lit_psion gives the W&B run its run's id" in \
            capsys.readouterr().err  # fmt: skip
    assert not list(tmp_path.glob("2*"))


def test_a_resume_refused_at_setup_opens_no_wandb_run(tmp_path: Path) -> None:
    """Lightning opens every logger's experiment before its setup hooks, where a resume is checked: a refused
    one must not open a W&B run under the run's id (and mark it failed) while run.json says completed."""
    overlay = ("--config", "configs/overlays/wandb.yaml", "--trainer.default_root_dir", str(tmp_path))
    assert fit_subprocess(*overlay).returncode == 0
    run = tmp_path / read_latest(tmp_path)
    before = sorted(run.glob("wandb/offline-run-*")), (run / "run.json").read_bytes()
    result = fit_subprocess(*overlay, "--trainer.max_steps", "40", "--ckpt_path", "last",
                            "--model.init_args.decoder.dropout", "0.0")  # fmt: skip
    assert result.returncode == 4, result.stderr[-2000:]
    assert (sorted(run.glob("wandb/offline-run-*")), (run / "run.json").read_bytes()) == before


def test_the_graph_cores_training_loss_is_drawn_with_the_losses(tmp_path: Path) -> None:
    """A graph core logs train/mse, not train/loss: its loss panel held validation alone."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,train/mse\n9,0.0056\n19,0.0047\n")  # before the first validation
    assert "loss.png" in write_plots({"run": read_metrics(run)}, tmp_path / "plots")
    assert _png(tmp_path / "plots" / "loss.png")


@pytest.mark.parametrize("mode", ["bogus", "Offline", ""])
def test_an_unknown_wandb_mode_is_one_line_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, mode: str
) -> None:
    """W&B itself fails with a pydantic ValidationError (exit 1) at training start."""
    monkeypatch.setenv("WANDB_MODE", mode)
    assert fit("--config", "configs/overlays/wandb.yaml", "--trainer.default_root_dir", str(tmp_path)) == 2
    assert f"WANDB_MODE is {mode!r}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


class _Hyper(L.LightningModule):
    """A user's module that saves its hyperparameters, which Lightning logs to its loggers before training."""

    def __init__(self, width: int = 3, flavour: str = "quince-tart") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(width, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3)), batch_size=4)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_wandb_logger_that_joins_at_training_start_still_gets_the_modules_hyperparameters(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import WandbLogger

    from lit_psion.callbacks.wandb import WandbEvidence

    logger = WandbLogger(save_dir=str(tmp_path), offline=True, id="hyper", project="lit_psion")
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=str(tmp_path), callbacks=[WandbEvidence([logger])])  # fmt: skip
    trainer.fit(_Hyper())
    try:
        config = logger.experiment.config  # the W&B run's config, as W&B holds it
        assert (config.get("width"), config.get("flavour")) == (3, "quince-tart")
    finally:
        logger.experiment.finish()


class LoggersAtTrainStart(Callback):
    """A user's evidence callback: writes the names of the loggers it sees in its own ``on_train_start``."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        Path(self.out).write_text(json.dumps([type(logger).__name__ for logger in trainer.loggers]))


def test_a_users_callback_sees_the_wandb_logger_when_training_starts(tmp_path: Path) -> None:
    """W&B loggers join the trainer at training start (not before its setup hooks); a callback configured by
    the user must still find them in its own on_train_start, as with any other logger."""
    seen = tmp_path / "loggers.json"
    root = str(tmp_path / "runs")
    result = fit_subprocess("--config", "configs/overlays/wandb.yaml", "--trainer.default_root_dir", root,
                            "--trainer.callbacks+=tests.callbacks.test_reports.LoggersAtTrainStart",
                            "--trainer.callbacks.out", str(seen))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "WandbLogger" in json.loads(seen.read_text())


class FailAtTeardown(Callback):
    """Raises in teardown, after the fit completed and sealed its chain (a user's callback with a bug there)."""

    def teardown(self, trainer: L.Trainer, *args: object) -> None:
        raise RuntimeError("injected failure in teardown")


class TakeTheDashboard(Callback):
    """Puts a file where the dashboard's directory (or its page) goes, at the first validation's end."""

    def __init__(self, page: bool = False) -> None:
        self.page = page

    def on_validation_end(self, trainer: L.Trainer, *args: object) -> None:
        directory = Path(trainer.default_root_dir) / read_latest(Path(trainer.default_root_dir)) / "dashboard"
        if self.page and not (directory / "index.html").is_dir():
            directory.mkdir(exist_ok=True)
            (directory / "index.html").unlink(missing_ok=True)
            (directory / "index.html").mkdir()
        elif not self.page and not directory.is_file():
            shutil.rmtree(directory, ignore_errors=True)
            directory.write_text("not a directory")


AFTER_THE_END = {  # what goes wrong -> (the callback, the fit's exit code)
    "dashboard directory is a file": ("tests.callbacks.test_reports.TakeTheDashboard", 0),
    "dashboard page is a directory": ("tests.callbacks.test_reports.TakeTheDashboard", 0),
    "a user's teardown raises": ("tests.callbacks.test_reports.FailAtTeardown", 1),
}


@pytest.mark.parametrize("case", AFTER_THE_END)
def test_nothing_after_a_completed_run_breaks_its_chain_or_record(tmp_path: Path, case: str,
                                                                   capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """The dashboard is a view, not evidence: one it cannot draw is a warning and the fit completes. A failure
    after the run completed (its chain sealed) appends no receipt after the seal and leaves run.json completed,
    so the run verifies and resumes."""
    callback, code = AFTER_THE_END[case]
    extra = ("--trainer.callbacks.page", "true") if "page" in case else ()
    args = ("--trainer.default_root_dir", str(tmp_path), "--trainer.val_check_interval", "2",
            "--trainer.limit_val_batches", "1")  # fmt: skip
    assert fit(*args, "--trainer.max_steps", "4", f"--trainer.callbacks+={callback}", *extra) == code
    run = tmp_path / read_latest(tmp_path)
    assert read_json(run / "run.json")["status"] == "completed"
    assert main(["receipts", "verify", str(run)]) == 0
    if code == 0:
        assert capsys.readouterr().err.count("the dashboard was not written") == 1
    assert fit(*args, "--trainer.max_steps", "6", "--ckpt_path", "last") == 0


def test_a_key_one_config_lacks_is_told_apart_from_one_it_sets_to_null(tmp_path: Path) -> None:
    """Comparing a decoder run with a MOSAIC run showed a key only one of them has as None, as a null setting is."""
    from lit_psion.report import ABSENT, config_diff

    runs = []
    for name, config in (("a", "trainer:\n  max_steps: 3\n  profiler: null\n"), ("b", "trainer:\n  max_steps: 3\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(config)
        runs.append(tmp_path / name)
    assert config_diff(runs) == [("trainer.profiler", [None, ABSENT])]
    assert str(ABSENT) == "(not in this config)"


def test_a_run_without_its_config_is_not_shown_as_a_config_without_keys(tmp_path: Path) -> None:
    """Every key read '(not in this config)' for a run whose config.yaml was gone, as if its config lacked them."""
    from lit_psion.report import NO_CONFIG, config_diff

    runs = []
    for name, config in (("a", "trainer:\n  max_steps: 3\n"), ("b", "trainer:\n  max_steps: 4\n"), ("c", None)):
        (tmp_path / name).mkdir()
        if config is not None:
            (tmp_path / name / "config.yaml").write_text(config)
        runs.append(tmp_path / name)
    assert config_diff(runs) == [("trainer.max_steps", [3, 4, NO_CONFIG])]
    assert str(NO_CONFIG) == "(no config.yaml)"


def test_compare_into_a_pipe_keeps_each_cell_whole(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    """Written to a file or a pipe, the table was 80 columns wide: with many runs every cell was folded to '…'."""
    many = [str(run) for run in two_runs] * 5
    done = subprocess.run([sys.executable, "-m", "lit_psion", "compare", *many, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    finals = done.stdout[done.stdout.index("final metrics"):]
    status_row = next(line for line in finals.splitlines() if "status" in line)
    assert status_row.count("completed") == 10 and "…" not in status_row, status_row


def test_one_runs_metrics_on_one_axes_are_told_apart_by_colour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dashboard drew train/loss and val/loss in the same colour (only the line style differed); a comparison
    keeps one colour per run."""
    from lit_psion import report

    drawn: list = []
    monkeypatch.setattr(report, "_save", lambda figure, path: drawn.append(figure))
    series = {"train/loss": [(1, 2.0), (2, 1.5), (3, 1.2)], "val/loss": [(2, 1.8), (3, 1.6), (4, 1.4)]}
    assert report.plot_panel({"run": series}, "loss", tmp_path / "loss.png")
    assert len({line.get_color() for line in drawn[-1].axes[0].lines}) == 2
    assert report.plot_panel({"a": series, "b": series}, "loss", tmp_path / "loss.png")
    colours = [line.get_color() for line in drawn[-1].axes[0].lines]
    assert colours[0] == colours[1] != colours[2] == colours[3]
