"""Transactional steps: bad steps are undone bitwise, every decision is receipted, repeated failure is bounded."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.strategies import SingleDeviceStrategy, StrategyRegistry

from lit_psion.callbacks import PointerCheckpoint, Receipts
from lit_psion.checkpoint_io import ManifestCheckpointIO
from lit_psion.core import RunLayout, read_json
from lit_psion.core.audit import check_skip_list
from lit_psion.core.errors import ConfigError, TransactionError
from lit_psion.core.run import read_latest
from lit_psion.report import timeline_events
from lit_psion.strategies import (
    SkipList,
    SkippedBatch,
    Transactional,
    TransactionalDDPStrategy,
    TransactionalStrategy,
    TransactionPolicy,
)
from lit_psion.strategies.engines import settings_follow_the_name
from tests.helpers import REPO_ROOT, assert_tree_equal, fit, latest_checkpoint
from tests.strategies.regression import Regression, StateRecorder

TOLERANT = TransactionPolicy(rollback_tol=1.0)  # momentum makes clean steps wobble by up to ~40%
RESTORING = TransactionPolicy(rollback_tol=1.0, restore_after=2, stop_after=4)


def train(root: Path, module: L.LightningModule, strategy: TransactionalStrategy, max_steps: int,
          *callbacks: L.Callback) -> StateRecorder:  # fmt: skip
    recorder = StateRecorder()
    trainer = L.Trainer(
        strategy=strategy, max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(root), plugins=[ManifestCheckpointIO()],
        callbacks=[recorder, Receipts(), *callbacks],
    )  # fmt: skip
    trainer.fit(module)
    return recorder


def transactions(root: Path) -> list[dict]:
    lines = (root / "receipts.jsonl").read_text().splitlines()
    return [json.loads(line)["body"] for line in lines if json.loads(line)["kind"] == "transaction"]


def test_nan_and_spike_batches_are_rolled_back_bitwise_and_training_goes_on(tmp_path: Path) -> None:
    strategy = TransactionalStrategy(TOLERANT)
    recorder = train(tmp_path, Regression(poison={2: "nan", 4: "spike"}), strategy, max_steps=8)
    for step in range(8):
        before, after = recorder.before[step], recorder.after[step]
        if step in (2, 4):
            assert_tree_equal(after, before, f"step {step + 1}")  # params and optimizer state as they were
        else:
            assert not torch.equal(after["params"]["layer.weight"], before["params"]["layer.weight"])
    receipts = transactions(tmp_path)
    assert [r["decision"] for r in receipts] == ["commit"] * 2 + ["rollback", "commit", "rollback"] + ["commit"] * 3
    assert "nonfinite_loss" in receipts[2]["reasons"] and "nonfinite_grad" in receipts[2]["reasons"]
    assert receipts[4]["reasons"] == ["regression"] and receipts[4]["post_loss"] > receipts[4]["pre_loss"] * 2
    assert (strategy.commits, strategy.rolled_back) == (6, 2)
    step_receipts = [json.loads(line) for line in (tmp_path / "receipts.jsonl").read_text().splitlines()]
    accepted = [r["body"]["step_out"] for r in step_receipts if r["kind"] == "trainer_step"]
    assert accepted == [1, 2, 4, 6, 7, 8], "rolled-back steps get no trainer_step receipt"


class _CountedRegression(Regression):
    """Counts its transaction_loss calls; ``pure`` says (or not) that the loss depends on the weights alone."""

    def __init__(self, pure: bool, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.transaction_loss_is_pure, self.measured = pure, 0

    def transaction_loss(self, batch: object) -> torch.Tensor:
        self.measured += 1
        return super().transaction_loss(batch)


class _NudgeAt(L.Callback):
    """Change a weight in place after the given steps, outside any optimizer step."""

    def __init__(self, *steps: int) -> None:
        self.steps = set(steps)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: object) -> None:
        if trainer.global_step in self.steps:
            with torch.no_grad():
                module.layer.bias.add_(0.25)


def _measured_run(root: Path, pure: bool, *callbacks: L.Callback) -> tuple[list[dict], int]:
    torch.manual_seed(0)  # the same initial weights in every run
    module = _CountedRegression(pure, poison={4: "spike"})
    root.mkdir(parents=True)
    train(root, module, TransactionalStrategy(TransactionPolicy(rollback_tol=1.0, buffer_len=4)), 10, *callbacks)
    return transactions(root), module.measured


def test_a_pure_module_takes_pre_loss_from_the_last_post_loss_with_the_same_decisions(tmp_path: Path) -> None:
    saved = {}
    for nudged in ((), (3, 6)):
        (measured, calls), (reused, fewer) = [_measured_run(tmp_path / f"{len(nudged)}-{pure}", pure, _NudgeAt(*nudged))
                                              for pure in (False, True)]  # fmt: skip
        assert reused == measured  # pre and post losses bitwise, and every decision
        assert "rollback" in {r["decision"] for r in reused}
        saved[nudged] = calls - fewer
    assert saved[()] > saved[(3, 6)] > 0  # weights changed outside a step: those steps measured pre_loss again


class _NoTransactionLoss(Regression):
    transaction_loss = None  # the strategy falls back to training_step, with logging switched off


def test_a_module_without_transaction_loss_is_measured_through_training_step(tmp_path: Path) -> None:
    strategy = TransactionalStrategy(TOLERANT)
    train(tmp_path, _NoTransactionLoss(poison={2: "nan", 4: "spike"}), strategy, max_steps=6)
    receipts = transactions(tmp_path)
    assert [r["decision"] for r in receipts] == ["commit", "commit", "rollback", "commit", "rollback", "commit"]
    assert all(r["post_loss"] is not None for i, r in enumerate(receipts) if i != 2)


def test_gradient_accumulation_compares_like_with_like(tmp_path: Path) -> None:
    strategy = TransactionalStrategy(TOLERANT)
    recorder = StateRecorder()
    trainer = L.Trainer(strategy=strategy, max_steps=4, accumulate_grad_batches=4, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), callbacks=[recorder])  # fmt: skip
    trainer.fit(Regression())
    assert (strategy.commits, strategy.rolled_back) == (4, 0)  # pre_loss was once 1/4 of post_loss: all rolled back


def test_grad_norm_max_rolls_back_the_spike_alone(tmp_path: Path) -> None:
    strategy = TransactionalStrategy(TransactionPolicy(grad_norm_max=50.0, rollback_tol=1e6))
    train(tmp_path, Regression(poison={3: "spike"}), strategy, max_steps=6)
    assert [r["reasons"] for r in transactions(tmp_path)] == [[]] * 3 + [["grad_norm"]] + [[]] * 2


def test_all_commits_train_exactly_like_the_default_strategy(tmp_path: Path) -> None:
    roots = [tmp_path / "plain", tmp_path / "tx"]
    assert fit("--trainer.default_root_dir", str(roots[0])) == 0
    assert fit("--trainer.default_root_dir", str(roots[1]), "--trainer.strategy", "transactional") == 0  # by name
    plain, transactional = latest_checkpoint(roots[0]), latest_checkpoint(roots[1])
    assert_tree_equal(transactional["state_dict"], plain["state_dict"], "state_dict")  # dropout 0.1 included
    assert_tree_equal(transactional["optimizer_states"], plain["optimizer_states"], "optimizer_states")
    run = roots[1] / read_latest(roots[1])
    assert [(r["decision"], r["stage_id"]) for r in transactions(run)] == [("commit", "pretrain")] * 12
    assert "transactions/commit_rate" in (run / "metrics.csv").read_text().splitlines()[0]


def test_repeated_rollbacks_restore_the_checkpoint_and_skip_list_survives_a_restart(tmp_path: Path) -> None:
    strategy = TransactionalStrategy(RESTORING)
    checkpoints = PointerCheckpoint(every_n_train_steps=2, keep_last_k=10)
    recorder = train(tmp_path, Regression(poison={3: "nan", 4: "nan"}), strategy, 13, checkpoints)  # 8 batches/epoch
    receipts = transactions(tmp_path)
    assert [r["action"] for r in receipts[3:5]] == [None, "restored:step-000004"]  # step 4 was rolled back before it
    rolled_back = [(r["step"], "restore" if (r["action"] or "").startswith("restored:") else "rollback")
                   for r in receipts if r["decision"] == "rollback"]  # fmt: skip
    drawn = [(step, row) for step, row, _ in timeline_events(tmp_path) if row in ("rollback", "restore")]
    assert drawn == rolled_back and {row for _, row in drawn} == {"rollback", "restore"}  # the dashboard's timeline
    restored = ManifestCheckpointIO().load_checkpoint(tmp_path / "checkpoints" / "step-000004")
    assert_tree_equal(recorder.after[4]["params"], restored["state_dict"], "restored weights")
    skip = SkipList.load(RunLayout.of(tmp_path).skip_list)
    assert [entry.step for entry in skip] == [4, 5]
    assert all(entry.key in skip and "nonfinite_loss" in entry.reasons for entry in skip)
    # epoch 2: the skip-listed batches are not trained on again
    assert [(r["step"], r["reasons"], r["action"]) for r in receipts[11:13]] == [
        (12, ["skip_listed"], "skipped"),
        (13, ["skip_listed"], "skipped"),
    ] or [r["step"] for r in receipts if r["action"] == "skipped"] == [12, 13]
    # a new process on the same run directory, with clean data, still skips them (its receipts back the list)
    again = TransactionalStrategy(RESTORING)
    train(tmp_path, Regression(), again, 5)
    assert [r["action"] for r in transactions(tmp_path)[len(receipts):]] == [None] * 3 + ["skipped", "skipped"]


def test_persistent_failure_stops_with_a_typed_error(tmp_path: Path) -> None:
    strategy = TransactionalStrategy(RESTORING)
    with pytest.raises(TransactionError, match="4 consecutive steps rolled back") as raised:
        train(tmp_path, Regression(poison=dict.fromkeys(range(2, 8), "nan")), strategy, 12)
    assert raised.value.exit_code == 7 and raised.value.failure_class == "diverged"
    assert [r["decision"] for r in transactions(tmp_path)] == ["commit"] * 2 + ["rollback"] * 4


def test_a_streak_that_stops_the_run_is_skip_listed_so_the_next_fit_gets_past_it(tmp_path: Path) -> None:
    """The streak's batches after its last restore were not listed: a resume replayed them and stopped on the same
    steps, every time, whatever it changed (the data is what fails)."""
    poisoned = dict.fromkeys(range(2, 8), "nan")
    with pytest.raises(TransactionError, match="4 consecutive steps rolled back"):
        train(tmp_path, Regression(poison=poisoned), TransactionalStrategy(RESTORING), 12)
    rolled_back = [r for r in transactions(tmp_path) if r["decision"] == "rollback"]
    assert rolled_back[-1]["action"] == "stopped"
    listed = SkipList.load(tmp_path / "skip_list.json")
    assert {r["batch_digest"] for r in rolled_back} == {entry.key for entry in listed}
    before = len(transactions(tmp_path))
    train(tmp_path, Regression(poison=poisoned), TransactionalStrategy(RESTORING), 12)  # the same bad batches
    again = transactions(tmp_path)[before:]
    assert [r["action"] for r in again if r["decision"] == "rollback"][:4] == ["skipped"] * 4
    assert "stopped" not in {r["action"] for r in again}


def test_the_cli_stops_a_diverging_run_with_exit_7(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # lr 1e4 makes every step overshoot: each one is rolled back for regression
    code = fit("--trainer.default_root_dir", str(tmp_path), "--trainer.strategy",
               "lit_psion.strategies.TransactionalStrategy", "--trainer.strategy.policy.stop_after", "3",
               "--trainer.strategy.policy.restore_after", "3", "--model.init_args.optimizer.lr", "1e4",
               "--model.init_args.optimizer.warmup_steps", "0")  # fmt: skip
    assert code == 7
    said = capsys.readouterr().err
    assert "3 consecutive steps rolled back" in said
    assert f"continue with --trainer.default_root_dir {tmp_path} --ckpt_path last, with a lower learning rate" in said
    run = tmp_path / read_latest(tmp_path)
    assert read_json(run / "run.json")["failure_class"] == "diverged"


def test_an_unknown_strategy_is_a_config_error_naming_the_registered_ones(capsys: pytest.CaptureFixture) -> None:
    assert fit("--trainer.strategy", "lit_psion.strategies.Nope") == 2
    err = capsys.readouterr().err
    assert "lit_psion.strategies.Nope" in err and "transactional" in err


def test_a_mistyped_strategy_name_is_answered_with_the_nearest_registered_one(capsys: pytest.CaptureFixture) -> None:
    assert fit("--trainer.strategy", "transactional_shardd") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion: error:")]
    assert len(errors) == 1 and "did you mean transactional_sharded?" in errors[0]


BAD_POLICY = {
    "name + flag": ("--trainer.strategy", "transactional", "--trainer.strategy.policy.rollback_tol", "-1"),
    "name= + flag=": ("--trainer.strategy=transactional_ddp", "--trainer.strategy.policy.rollback_tol=-1"),
    "class path + flag": ("--trainer.strategy", "lit_psion.strategies.TransactionalStrategy",
                          "--trainer.strategy.policy.rollback_tol", "-1"),
    "overlay + flag": ("--config", "configs/overlays/transactional.yaml", "--trainer.strategy.policy.rollback_tol",
                       "-1"),
    "fsdp overlay + flag": ("--config", "configs/overlays/fsdp_transactional.yaml",
                            "--trainer.strategy.policy.restore_after", "0"),
    "yaml": ("--config", "YAML"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_POLICY)
def test_a_bad_policy_value_from_the_command_line_is_one_line_and_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """However the policy is given, its own message reaches the user (not jsonargparse's dump of the config)."""
    args = BAD_POLICY[case]
    if "YAML" in args:
        overlay = tmp_path / "policy.yaml"
        overlay.write_text("trainer:\n  strategy:\n    class_path: lit_psion.strategies.TransactionalStrategy\n"
                           "    init_args:\n      policy: {rollback_tol: -0.5}\n")  # fmt: skip
        args = ("--config", str(overlay))
    root = tmp_path / "runs"
    assert fit(*args, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "1") == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lit_psion:")]
    assert len(errors) == 1 and "transaction policy:" in errors[0] and "Namespace" not in err, err[-2000:]
    expected = "restore_after" if any("restore_after" in arg for arg in args) else "rollback_tol must be >= 0"
    assert expected in errors[0]
    assert not root.exists() or not list(root.iterdir())


def test_settings_after_a_strategy_name_apply_to_that_strategy(tmp_path: Path) -> None:
    assert fit("--trainer.strategy", "transactional", "--trainer.strategy.policy.rollback_tol", "0.5",
               "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "1") == 0  # fmt: skip
    strategy = yaml.safe_load((tmp_path / read_latest(tmp_path) / "config.yaml").read_text())["trainer"]["strategy"]
    assert strategy["class_path"].endswith("TransactionalStrategy")
    assert strategy["init_args"]["policy"] == {**dataclasses.asdict(TransactionPolicy()), "rollback_tol": 0.5}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--trainer.strategy", "ddp", "--trainer.strategy.find_unused_parameters", "true"],
         ["--trainer.strategy", "lightning.pytorch.strategies.ddp.DDPStrategy", "--trainer.strategy.start_method=popen",
          "--trainer.strategy.find_unused_parameters", "true"]),
        (["--trainer.strategy=ddp_spawn_find_unused_parameters_true",
          "--trainer.strategy.find_unused_parameters=false"],
         ["--trainer.strategy=lightning.pytorch.strategies.ddp.DDPStrategy",
          "--trainer.strategy.find_unused_parameters=true", "--trainer.strategy.start_method=spawn",
          "--trainer.strategy.find_unused_parameters=false"]),  # the user's own setting comes last and wins
        (["--trainer.strategy", "ddp", "--trainer.max_steps", "3"], None),  # no settings follow: the name stands
        (["--trainer.strategy", "no_such", "--trainer.strategy.a", "1"], None),  # left for the name check to refuse
    ],
    ids=["preset name", "preset overridden", "name alone", "unknown name"],
)  # fmt: skip
def test_a_name_registered_with_settings_keeps_them_under_the_users(argv: list[str],
                                                                   expected: list[str] | None) -> None:  # fmt: skip
    assert settings_follow_the_name(argv) == (argv if expected is None else expected)


def test_settings_after_lightnings_ddp_name_apply_to_ddp(tmp_path: Path) -> None:
    assert fit("--trainer.strategy", "ddp", "--trainer.strategy.find_unused_parameters", "true", "--trainer.devices",
               "1", "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "1") == 0  # fmt: skip
    strategy = yaml.safe_load((tmp_path / read_latest(tmp_path) / "config.yaml").read_text())["trainer"]["strategy"]
    assert strategy["class_path"].endswith("DDPStrategy")
    assert strategy["init_args"]["start_method"] == "popen" and strategy["init_args"]["find_unused_parameters"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"rollback_tol": -1}, "rollback_tol"), ({"rollback_tol": float("nan")}, "rollback_tol"),
     ({"buffer_len": 0}, "buffer_len"), ({"buffer_len": 1025}, r"buffer_len must be in 1\.\.1024"),
     ({"buffer_len": 10**23}, "buffer_len"), ({"grad_norm_max": 0}, "grad_norm_max"),
     ({"restore_after": 5, "stop_after": 3}, "restore_after"), ({"grad_norm_max": float("nan")}, "a number or null"),
     ({"restore_after": 2.5}, "restore_after must be an int"), ({"buffer_len": True}, "buffer_len must be an int"),
     ({"rollback_tol": "0.3"}, "rollback_tol must be a number"), ({"grad_norm_max": -float("inf")}, "positive")],
)  # fmt: skip
def test_bad_policy_values_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TransactionPolicy(**kwargs)


def test_policy_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError, match=r"rollback_tol must be >= 0, got -1; buffer_len must be in 1\.\.1024"):
        TransactionPolicy(rollback_tol=-1, buffer_len=0)


def test_the_strategies_take_one_policy_with_its_defaults() -> None:
    assert TransactionalStrategy().policy == TransactionPolicy() == TransactionalDDPStrategy().policy
    assert TransactionalStrategy(TOLERANT, device="cpu").policy is TOLERANT
    assert TransactionalDDPStrategy(RESTORING, process_group_backend="gloo").policy is RESTORING


def test_strategies_are_registered_by_name_once() -> None:
    assert StrategyRegistry["transactional"]["strategy"] is TransactionalStrategy
    assert StrategyRegistry["transactional_ddp"]["strategy"] is TransactionalDDPStrategy
    with pytest.raises(ValueError, match="already present"):
        StrategyRegistry.register("transactional", TransactionalStrategy)
    trainer = L.Trainer(strategy="transactional", logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy, TransactionalStrategy) and trainer.strategy.policy == TransactionPolicy()


def test_the_overlay_sets_the_policy_and_a_flag_overrides_one_field(tmp_path: Path) -> None:
    assert fit("--config", "configs/overlays/transactional.yaml", "--trainer.strategy.init_args.policy.stop_after", "5",
               "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "1") == 0  # fmt: skip
    config = yaml.safe_load((tmp_path / read_latest(tmp_path) / "config.yaml").read_text())
    policy = config["trainer"]["strategy"]["init_args"]["policy"]
    assert policy == {**dataclasses.asdict(TransactionPolicy()), "stop_after": 5}


@pytest.mark.parametrize("value", ["0", str(10**23)])
def test_a_policy_value_out_of_range_on_the_command_line_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, value: str
) -> None:
    """10**23 overflowed the buffer's deque inside jsonargparse's union check: exit 1 and the whole namespace."""
    assert fit("--config", "configs/overlays/transactional.yaml", "--trainer.strategy.policy.buffer_len", value,
               "--trainer.default_root_dir", str(tmp_path)) == 2  # fmt: skip
    assert f"buffer_len must be in 1..1024 (1: the current batch only; each step measures its loss on every buffered " \
           f"batch), got {value}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


class _Finetune(Regression):
    stage: ClassVar[str] = "finetune"


def test_receipts_carry_the_stage_of_the_run(tmp_path: Path) -> None:
    train(tmp_path, _Finetune(), TransactionalStrategy(TOLERANT), max_steps=2)
    assert [r["stage_id"] for r in transactions(tmp_path)] == ["finetune"] * 2


class _ComposedStrategy(Transactional, SingleDeviceStrategy):
    """A third composition: the transaction mixin over another Lightning strategy, and nothing else."""


def test_the_mixin_makes_another_strategy_transactional(tmp_path: Path) -> None:
    strategy = _ComposedStrategy(TOLERANT, device="cpu")
    recorder = train(tmp_path, Regression(poison={1: "nan"}), strategy, max_steps=3)
    assert [r["decision"] for r in transactions(tmp_path)] == ["commit", "rollback", "commit"]
    assert_tree_equal(recorder.after[1], recorder.before[1], "the rolled-back step")


def test_the_skip_list_round_trips_through_its_file(tmp_path: Path) -> None:
    path = RunLayout(tmp_path, "run").skip_list
    skip = SkipList.load(path)
    assert len(skip) == 0 and not path.exists()
    first = SkippedBatch(key="a" * 64, sample_ids=(3, 4), step=7, reasons=("regression",))
    skip.add(first)
    skip.add(dataclasses.replace(first, step=9))  # listed again: the first entry stays
    skip.add(SkippedBatch(key="b" * 64, sample_ids=None, step=8, reasons=("nonfinite_loss", "nonfinite_grad")))
    path.parent.mkdir()
    skip.save()
    again = SkipList.load(path)
    assert list(again) == list(skip) and again.path == path
    assert "a" * 64 in again and "c" * 64 not in again and next(iter(again)).step == 7
    assert read_json(path) == {"version": 1, "batches": [entry.to_json_dict() for entry in skip]}
    assert read_json(path)["batches"][0] == {"key": "a" * 64, "sample_ids": [3, 4], "step": 7,
                                             "reasons": ["regression"]}  # fmt: skip


@pytest.mark.parametrize("kind", ["ddp", "elastic_mesh"])
def test_ddp_one_rank_nan_rolls_back_every_rank(tmp_path: Path, kind: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO_ROOT / "tests" / "strategies" / "ddp_rollback.py"), str(tmp_path), kind]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("PL_GLOBAL_SEED", None)  # left by in-process fits; it would change how the sampler deals samples
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["decisions"] == ranks[1]["decisions"] == ["commit", "commit", "rollback", "commit", "commit"]
    assert ranks[1]["reasons"][2] == ["nonfinite_loss", "nonfinite_grad"] or "nonfinite_loss" in ranks[1]["reasons"][2]
    for step in range(5):
        assert_tree_equal(ranks[0]["after"][step], ranks[1]["after"][step], f"rank params at step {step + 1}")
    for rank in ranks:
        assert_tree_equal(rank["after"][2], rank["before"][2], "the rolled-back step")
    skipped = list(SkipList.load(tmp_path / "skip_list.json"))  # gathered from both ranks, written by rank 0
    assert [entry.step for entry in skipped] == [3, 3] and skipped[0].key != skipped[1].key
    assert "nonfinite_loss" in skipped[1].reasons
    (rollback,) = [r for r in transactions(tmp_path) if r["decision"] == "rollback"]
    assert rollback["batch_digests"] == [entry.key for entry in skipped], "every rank's batch, in rank order"
    backed, pending = check_skip_list(RunLayout.of(tmp_path))  # both ranks' batches are borne out
    assert (len(backed), pending) == (2, [])


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2, 3]", '{"batches": 5}', '{"batches": [{"key": "k"}]}',
                                     '{"batches": [{"key": "k", "step": "x"}]}', b"\xff\xfe", "directory"])  # fmt: skip
def test_a_skip_list_that_is_not_one_is_refused_in_one_line(tmp_path: Path, content: str | bytes) -> None:
    """It decides which batches train: a garbled one was an exit 1 on resume (JSONDecodeError, TypeError)."""
    from lit_psion.core.errors import EvidenceError
    from lit_psion.core.skip_list import SkipList

    path = tmp_path / "skip_list.json"
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(EvidenceError, match="is not a skip list"):
        SkipList.load(path)
    assert len(SkipList.load(tmp_path / "absent.json")) == 0


def test_a_run_that_diverges_before_its_first_checkpoint_is_not_told_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The line said "continue with --ckpt_path last", which then exits 4: there is no checkpoint yet."""
    code = fit("--trainer.default_root_dir", str(tmp_path), "--trainer.strategy",
               "lit_psion.strategies.TransactionalStrategy", "--trainer.strategy.policy.stop_after", "3",
               "--trainer.strategy.policy.restore_after", "3", "--model.init_args.optimizer.lr", "1e4",
               "--model.init_args.optimizer.warmup_steps", "0", "--checkpoint.every_n_train_steps", "100")  # fmt: skip
    assert code == 7
    said = capsys.readouterr().err
    assert "start a new run (no checkpoint was written yet)" in said and "--ckpt_path last" not in said


@pytest.mark.slow  # default-suite budget: a two-process fit (~20 s)
def test_a_two_rank_skip_list_lists_every_ranks_samples_of_a_skipped_global_batch(tmp_path: Path) -> None:
    """One global batch is one entry, whose slices are on different ranks: rank 0's entry alone was kept, so the
    list named half the samples a single process lists for the same batch."""
    from tests.helpers import fit_subprocess

    diverging = ("--trainer.max_steps", "30", "--model.init_args.optimizer.lr", "5.0")
    for root, engine in (("ddp", ("--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.strategy",
                                  "transactional_ddp")), ("one", ("--trainer.strategy", "transactional"))):  # fmt: skip
        assert fit_subprocess(*diverging, *engine, "--trainer.default_root_dir", str(tmp_path / root)).returncode == 7
    ddp, one = (json.loads((tmp_path / r / read_latest(tmp_path / r) / "skip_list.json").read_text())["batches"]
                for r in ("ddp", "one"))  # fmt: skip
    assert [(b["key"], b["sample_ids"]) for b in ddp] == [(b["key"], b["sample_ids"]) for b in one]
    assert len(ddp[0]["sample_ids"]) == 8, "fixtures/tiny.yaml's global batch"


def test_a_global_batch_skipped_on_two_ranks_is_one_entry_with_every_ranks_samples(tmp_path: Path) -> None:
    def entry(key: str, ids: tuple[int, ...] | None) -> SkippedBatch:
        return SkippedBatch(key=key * 64, sample_ids=ids, step=3, reasons=("regression",))

    skip = SkipList(tmp_path / "skip_list.json")
    skip.add_ranks([[entry("a", (1, 2)), entry("a", (1, 2)), entry("b", (5,))], [entry("a", (3, 4)), entry("c", None)]])
    assert {e.key[0]: e.sample_ids for e in skip} == {"a": (1, 2, 3, 4), "b": (5,), "c": None}
