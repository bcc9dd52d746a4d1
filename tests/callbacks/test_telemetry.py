"""Telemetry lands in metrics.csv, with sane values, and stays out of the receipt chain."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_psion.core.layout import RECEIPTS_FILE
from lit_psion.core.run import read_latest
from tests.helpers import fit

KEYS = ["grad_norm", "clip_ratio", "update_norm", "param_norm", "tokens_per_s", "flops_per_s", "mfu"]


def test_telemetry_is_logged_on_log_steps(tmp_path: Path) -> None:
    args = ("--trainer.default_root_dir", str(tmp_path), "--trainer.log_every_n_steps", "4", "--trainer.max_steps", "8",
            "--trainer.gradient_clip_val", "0.05", "--telemetry.peak_flops", "1e12")  # fmt: skip
    assert fit(*args) == 0
    run_dir = tmp_path / read_latest(tmp_path)
    rows = [r for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get("telemetry/grad_norm")]
    assert [int(r["step"]) for r in rows] == [3, 7]
    for row in rows:
        values = {key: float(row[f"telemetry/{key}"]) for key in KEYS}
        assert values["grad_norm"] > 0 and values["update_norm"] > 0 and values["param_norm"] > 0
        assert values["clip_ratio"] == pytest.approx(0.05 / values["grad_norm"], rel=1e-5)  # the tiny clip bites
        assert values["clip_ratio"] < 1.0
        assert values["tokens_per_s"] > 0 and values["mfu"] == pytest.approx(values["flops_per_s"] / 1e12, rel=1e-5)
    assert "telemetry" not in (run_dir / RECEIPTS_FILE).read_text()


class StopAfter(Callback):
    """Stops the fit after ``step`` optimizer steps, from ``on_train_batch_end`` (as Lightning's Timer does)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.parametrize("stop_after", [None, 5], ids=["max-steps", "stopped-by-a-callback-between-rows"])
def test_every_log_row_holds_the_values_of_its_own_step(tmp_path: Path, stop_after: int | None) -> None:
    """The training step's scalars are logged only for the steps Lightning writes a row (self.log costs ~1 ms a
    step): every row, the one Lightning adds when a callback stops the fit between rows too, holds the loss its
    step's receipt records, and the learning rate."""
    stop = ("--trainer.callbacks+=tests.callbacks.test_telemetry.StopAfter", f"--trainer.callbacks.step={stop_after}")
    args = ("--trainer.default_root_dir", str(tmp_path), "--trainer.log_every_n_steps", "3", "--trainer.max_steps",
            "7", *(stop if stop_after else ()))  # fmt: skip
    assert fit(*args) == 0
    run_dir = tmp_path / read_latest(tmp_path)
    rows = [r for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get("train/loss")]
    receipts = [json.loads(line) for line in (run_dir / RECEIPTS_FILE).read_text().splitlines()]
    loss_at = {r["body"]["step_in"]: r["body"]["loss"] for r in receipts if r["kind"] == "trainer_step"}
    expected = [2, 4] if stop_after else [2, 5, 6]  # rows after steps 3, 6 and the last, 7, or 3 and the stop at 5
    assert [int(r["step"]) for r in rows] == expected
    for row in rows:
        assert float(row["train/loss"]) == pytest.approx(loss_at[int(row["step"])], rel=1e-6)
        assert float(row["train/lr"]) > 0


def test_tokens_count_the_global_batch_whatever_slice_a_rank_trains() -> None:
    import torch

    from lit_psion.callbacks.telemetry import global_tokens

    whole = {"input_ids": torch.zeros(12, 32), "sample_ids": torch.arange(12), "global_sample_ids": torch.arange(12)}
    slice_of_3 = {"input_ids": torch.zeros(4, 32), "sample_ids": torch.arange(4), "global_sample_ids": torch.arange(12)}
    assert global_tokens(whole) == global_tokens(slice_of_3) == 12 * 32
    assert global_tokens({"input_ids": torch.zeros(2, 8)}) == 16 and global_tokens(torch.zeros(3)) == 0


def test_a_step_bounded_run_counts_steps_and_prints_lines_when_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert fit("--trainer.max_steps", "20", "--trainer.default_root_dir", str(tmp_path),
               "--progress_bar.print_every", "5") == 0  # fmt: skip  (pytest's stdout is not a terminal)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["5/20", "10/20", "15/20", "20/20"], lines
    assert all(" left" in line and "train/loss " in line for line in lines)
    assert "━" not in out and "it/s" not in out  # Rich's last frame, with its own elapsed time, is not printed too
    # Each line shows its own step's loss, the last one the run's final loss (they lagged a logged row behind).
    receipts = [json.loads(line) for line in (tmp_path / read_latest(tmp_path) / "receipts.jsonl").open()]
    losses = {r["body"]["step_out"]: r["body"]["loss"] for r in receipts if r["kind"] == "trainer_step"}
    assert [float(line.split("train/loss ")[1].split()[0]) for line in lines] == pytest.approx(
        [losses[step] for step in (5, 10, 15, 20)], rel=1e-3)  # fmt: skip


LAST_ROW_CASES = {
    "decoder": ((), ("train/loss", "train/lr", "telemetry/grad_norm", "telemetry/tokens_per_s")),
    "decoder, transactional": (("--trainer.strategy", "transactional"),
                               ("train/loss", "telemetry/update_norm", "transactions/commit_rate",
                                "transactions/rollbacks")),
    "graph core": (("--config", "configs/graph_core_oscillators.yaml"),
                   ("train/mse", "train/gamma", "telemetry/grad_norm", "telemetry/samples_per_s")),
}


@pytest.mark.parametrize("case", LAST_ROW_CASES)
def test_the_last_row_of_a_run_stopped_by_max_steps_holds_every_column(tmp_path: Path, case: str) -> None:
    """A fit that stops at max_steps between two rows gets its last step's row all the same, with what the model,
    the telemetry and the transactional strategy measured on that step, as every other row has."""
    extra, columns = LAST_ROW_CASES[case]
    config = extra[1] if extra[:1] == ("--config",) else None
    extra = extra[2:] if config else extra
    args = ("--trainer.default_root_dir", str(tmp_path), "--trainer.log_every_n_steps", "3", "--trainer.max_steps",
            "7", "--checkpoint.every_n_train_steps", "100", *extra)  # fmt: skip
    assert (fit(*args, config=config) if config else fit(*args)) == 0
    run_dir = tmp_path / read_latest(tmp_path)
    rows = {int(r["step"]): r for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get(columns[0])}
    assert sorted(rows) == [2, 5, 6]  # after steps 3, 6 and the last, 7
    for step, row in rows.items():
        missing = [column for column in columns if not row.get(column)]
        assert not missing, f"the row of step {step} lacks {missing}"


def test_the_update_norm_is_the_norm_of_every_parameters_change_a_grown_one_wholly() -> None:
    """Computed in place in the copy taken before the step; a parameter whose shape changed in the step (a graph
    core grew an edge) counts wholly, and a list of another length (the model grew a parameter) counts every one."""
    import torch

    from lit_psion.callbacks.telemetry import update_norm

    torch.manual_seed(0)
    before = [torch.randn(4, 3), torch.randn(5), torch.randn(2, 2)]
    after = [before[0] + 0.5, before[1] - 0.25, torch.randn(3, 2)]  # the last one grew
    expected = torch.cat([(after[0] - before[0]).flatten(), (after[1] - before[1]).flatten(), after[2].flatten()])
    copies = [b.clone() for b in before]
    assert update_norm(after, copies) == pytest.approx(float(expected.norm()), rel=1e-6)
    assert update_norm(after, before[:2]) == pytest.approx(float(torch.cat([p.flatten() for p in after]).norm()))
    assert update_norm([], []) == 0.0


class TrueUpdateNorms(Callback):
    """Writes each step's true update norm (from a copy of its own, made fresh every step) to ``path``."""

    def __init__(self, path: str) -> None:
        self.path, self.before = path, None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        self.before = [p.detach().clone() for p in pl_module.parameters() if p.requires_grad]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        after = [p.detach() for p in pl_module.parameters() if p.requires_grad]
        change = torch.cat([(a - b).flatten() for a, b in zip(after, self.before, strict=True)])
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps([trainer.global_step - 1, float(change.norm())]) + "\n")


def test_every_measurement_reuses_the_last_ones_copy_and_still_measures_its_own_step(tmp_path: Path) -> None:
    """On CPU the copy of the parameters is kept and filled again at the next measurement (a fresh one costs page
    faults): every row's update norm is that step's true one, not a difference against an earlier step's weights."""
    truth = tmp_path / "truth.jsonl"
    args = ("--trainer.default_root_dir", str(tmp_path), "--trainer.log_every_n_steps", "2", "--trainer.max_steps", "8",
            "--trainer.callbacks+=tests.callbacks.test_telemetry.TrueUpdateNorms", f"--trainer.callbacks.path={truth}")
    assert fit(*args) == 0
    rows = [r for r in csv.DictReader((tmp_path / read_latest(tmp_path) / "metrics.csv").open())
            if r.get("telemetry/update_norm")]  # fmt: skip
    true_norm = dict(json.loads(line) for line in truth.read_text().splitlines())
    assert [int(r["step"]) for r in rows] == [1, 3, 5, 7]
    for row in rows:
        assert float(row["telemetry/update_norm"]) == pytest.approx(true_norm[int(row["step"])], rel=1e-4)


def test_a_copy_is_refilled_only_where_it_matches_the_parameters_tensor_by_tensor() -> None:
    from lit_psion.callbacks.telemetry import copy_into

    params = [torch.randn(3, 2), torch.randn(4)]
    spare = copy_into(None, params)
    assert spare is not params and all(torch.equal(s, p) for s, p in zip(spare, params, strict=True))
    params[0].add_(1.0)
    assert copy_into(spare, params) is spare and torch.equal(spare[0], params[0])
    for changed in ([torch.randn(3, 3), params[1]], [params[0].double(), params[1]], params[:1]):  # grown, dtype, fewer
        fresh = copy_into(spare, changed)
        assert fresh is not spare and all(torch.equal(f, c) for f, c in zip(fresh, changed, strict=True))
