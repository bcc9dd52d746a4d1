"""Exact resume: a run stopped at step k and resumed to N equals the uninterrupted run, bitwise."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import yaml

from lit_psion.checkpoint_io import ManifestCheckpointIO
from lit_psion.core import read_json
from lit_psion.core.run import read_latest
from lit_psion.datamodules import CorpusDataModule
from lit_psion.models import DecoderLM
from lit_psion.nn.optim import warmup_cosine
from tests.helpers import TINY, assert_tree_equal, callbacks_config, consumed, fit, fit_subprocess, latest_checkpoint

N = 12
# 46 training samples at stride 200 -> 5 batches of 8 per epoch: step 5 closes epoch 0.
# The cosine schedule is pinned to N, so a run told to stop at k follows the same learning rates.
DATA = ("--data.sample_stride", "200", "--model.init_args.optimizer.decay_steps", str(N))
STEPS_PER_EPOCH = 5


def test_epoch_length_is_what_the_cases_assume() -> None:
    data = CorpusDataModule(files="fixtures/tiny_corpus.txt", tokenizer="char", block_size=32, batch_size=8,
                            sample_stride=200, split="tail")  # fmt: skip
    data.setup("fit")
    assert len(data.train_dataloader()) == STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list, Path]:
    root = tmp_path_factory.mktemp("full")
    extra = callbacks_config(root / "cb.json", ("RecordConsumed", {"path": str(root / "ids.jsonl")}))
    assert fit(*DATA, "--config", extra, "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(N)) == 0
    return latest_checkpoint(root), consumed(root / "ids.jsonl"), root / read_latest(root)


def _assert_same_run(resumed: dict, resumed_ids: list, uninterrupted: tuple[dict, list, Path]) -> None:
    reference, reference_ids, _ = uninterrupted
    assert resumed["global_step"] == reference["global_step"] == N
    assert_tree_equal(resumed["state_dict"], reference["state_dict"], "state_dict")
    assert_tree_equal(resumed["optimizer_states"], reference["optimizer_states"], "optimizer_states")
    assert_tree_equal(resumed["lr_schedulers"], reference["lr_schedulers"], "lr_schedulers")
    assert resumed_ids == reference_ids
    assert len(resumed_ids) == N


@pytest.mark.parametrize(
    ("k", "writes"),
    [(STEPS_PER_EPOCH, "sync"), (STEPS_PER_EPOCH + 2, "sync"), (STEPS_PER_EPOCH + 2, "async")],
    ids=["epoch-boundary", "mid-epoch", "mid-epoch-async-writes"],
)
def test_stop_and_resume_is_bitwise_identical(
    k: int, writes: str, tmp_path: Path, uninterrupted: tuple[dict, list, Path]
) -> None:
    _stop_and_resume(k, writes, tmp_path, uninterrupted)


def test_stop_and_resume_with_muon_is_bitwise_identical(tmp_path: Path, muon_uninterrupted: tuple) -> None:
    # Muon's resume once lost the schedule: the inner optimizers kept stale learning rates after loading
    _stop_and_resume(STEPS_PER_EPOCH + 2, "sync", tmp_path, muon_uninterrupted, MUON)


MUON = ("--model.init_args.optimizer.name", "muon")


@pytest.fixture(scope="module")
def muon_uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list, Path]:
    root = tmp_path_factory.mktemp("full_muon")
    extra = callbacks_config(root / "cb.json", ("RecordConsumed", {"path": str(root / "ids.jsonl")}))
    args = (*DATA, *MUON, "--config", extra, "--trainer.default_root_dir", str(root), "--trainer.max_steps", str(N))
    assert fit(*args) == 0
    return latest_checkpoint(root), consumed(root / "ids.jsonl"), root / read_latest(root)


def _stop_and_resume(k: int, writes: str, tmp_path: Path, uninterrupted: tuple, extra_args: tuple = ()) -> None:
    extra = callbacks_config(tmp_path / "cb.json", ("RecordConsumed", {"path": str(tmp_path / "ids.jsonl")}))
    common = (*DATA, *extra_args, "--config", extra, "--trainer.default_root_dir", str(tmp_path))
    common += ("--checkpoint.async_write", str(writes == "async").lower())
    assert fit(*common, "--trainer.max_steps", str(k)) == 0
    assert fit(*common, "--trainer.max_steps", str(N), "--ckpt_path", "last") == 0
    runs = [p for p in tmp_path.iterdir() if (p / "run.json").exists()]
    assert len(runs) == 1, "resuming must continue the same run directory"
    _assert_same_run(latest_checkpoint(tmp_path), consumed(tmp_path / "ids.jsonl"), uninterrupted)


def test_resume_after_sigkill_is_bitwise_identical(tmp_path: Path, uninterrupted: tuple[dict, list, Path]) -> None:
    ids = tmp_path / "ids.jsonl"
    killed = callbacks_config(tmp_path / "kill.json", ("RecordConsumed", {"path": str(ids)}), ("KillAt", {"step": 8}))
    common = (*DATA, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", str(N))
    result = fit_subprocess(*common, "--config", killed)
    assert result.returncode == -9, result.stderr[-2000:]
    assert latest_checkpoint(tmp_path)["global_step"] == 6  # steps 7 and 8 were lost with the process
    resume = callbacks_config(tmp_path / "cb.json", ("RecordConsumed", {"path": str(ids)}))
    assert fit(*common, "--config", resume, "--ckpt_path", "last") == 0
    _assert_same_run(latest_checkpoint(tmp_path), consumed(ids), uninterrupted)
    resumed = _train_rows(tmp_path / read_latest(tmp_path))
    assert resumed == _train_rows(uninterrupted[2]), "metrics.csv: each step's row once (step 7 was logged twice)"


def _train_rows(run_dir: Path) -> list[tuple[str, str]]:
    """(step, train/loss) of every training row of a run's metrics.csv, in file order."""
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [(row["step"], row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


@pytest.mark.parametrize("writes", ["sync", "async"])
def test_sigterm_pauses_after_a_checkpoint_and_resumes_bitwise(
    writes: str, tmp_path: Path, uninterrupted: tuple[dict, list, Path]
) -> None:
    ids = tmp_path / "ids.jsonl"
    stopped = callbacks_config(
        tmp_path / "term.json", ("RecordConsumed", {"path": str(ids)}), ("SigtermAt", {"step": 5})
    )
    common = (*DATA, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", str(N))
    common += ("--checkpoint.async_write", str(writes == "async").lower())
    result = fit_subprocess(*common, "--config", stopped)
    assert result.returncode == 143, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("lit_psion: paused by SIGTERM")
    assert "Received SIGTERM" not in result.stderr, result.stderr[-2000:]  # (Lightning's notice of it)
    run_dir = tmp_path / read_latest(tmp_path)
    assert read_json(run_dir / "run.json")["status"] == "paused"
    assert latest_checkpoint(tmp_path)["global_step"] == 5  # 5 is not a multiple of every_n_train_steps (3)
    resume = callbacks_config(tmp_path / "cb.json", ("RecordConsumed", {"path": str(ids)}))
    assert fit(*common, "--config", resume, "--ckpt_path", "last") == 0
    _assert_same_run(latest_checkpoint(tmp_path), consumed(ids), uninterrupted)


class CtrlCInStep(L.Callback):
    """Ctrl-C while step ``step`` trains (the kernel delivers SIGINT to this process)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("k", [STEPS_PER_EPOCH, STEPS_PER_EPOCH + 2], ids=["epoch-boundary", "mid-epoch"])
def test_ctrl_c_pauses_with_its_steps_row_and_resumes_bitwise(
    k: int, tmp_path: Path, uninterrupted: tuple[dict, list, Path]
) -> None:
    """Ctrl-C was raised at the end of its step, before the model's on_train_batch_end wrote the step's metrics row:
    the row of the step the run paused at was lost, and the resume went on after it."""
    ids = tmp_path / "ids.jsonl"
    stopped = callbacks_config(tmp_path / "int.json", ("RecordConsumed", {"path": str(ids)}),
                               (f"{__name__}.CtrlCInStep", {"step": k}))  # fmt: skip
    common = (*DATA, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", str(N))
    assert fit(*common, "--config", stopped) == 130
    run_dir = tmp_path / read_latest(tmp_path)
    record = read_json(run_dir / "run.json")
    assert (record["status"], record["global_step"]) == ("paused", k)  # (resumed from its last periodic checkpoint)
    assert _train_rows(run_dir) == _train_rows(uninterrupted[2])[:k]
    resume = callbacks_config(tmp_path / "cb.json", ("RecordConsumed", {"path": str(ids)}))
    assert fit(*common, "--config", resume, "--ckpt_path", "last") == 0
    _assert_same_run(latest_checkpoint(tmp_path), consumed(ids), uninterrupted)
    assert _train_rows(run_dir) == _train_rows(uninterrupted[2])


def test_an_async_write_holds_the_state_of_its_step_while_training_goes_on(
    tmp_path: Path, uninterrupted: tuple[dict, list, Path]
) -> None:
    # step 6's background write stalls while steps 7 and 8 update the weights and optimizer in place
    slow = callbacks_config(tmp_path / "slow.json", ("SlowCheckpointWrites", {"step": 6, "seconds": 3}))
    common = (*DATA, "--trainer.default_root_dir", str(tmp_path), "--checkpoint.async_write", "true")
    assert fit(*common, "--config", slow, "--trainer.max_steps", "9") == 0
    io = ManifestCheckpointIO()
    written = io.load_checkpoint(tmp_path / read_latest(tmp_path) / "checkpoints" / "step-000006")
    reference = io.load_checkpoint(uninterrupted[2] / "checkpoints" / "step-000006")
    assert_tree_equal(written["state_dict"], reference["state_dict"], "state_dict")
    assert_tree_equal(written["optimizer_states"], reference["optimizer_states"], "optimizer_states")


@pytest.mark.parametrize(
    ("override", "group_setting"),
    [
        (("--model.init_args.optimizer.lr", "0.01"), ("initial_lr", 0.01)),  # the schedule's base rate
        (("--model.init_args.optimizer.weight_decay", "0.0"), ("weight_decay", 0.0)),
        (("--model.init_args.optimizer.betas", "[0.8, 0.99]"), ("betas", (0.8, 0.99))),
        (("--model.init_args.optimizer.decay_steps", "40"), None),  # the schedule's shape
        (("--data.batch_size", "4"), None),  # the run goes on with smaller global batches
        (("--trainer.limit_train_batches", "2"), None),  # epochs end elsewhere: other batches (it was silent)
        ((), None),  # only a longer run: no news
    ],
    ids=["lr", "weight_decay", "betas", "decay_steps", "batch_size", "limit_train_batches", "longer"],
)
def test_a_resume_honours_and_records_the_settings_it_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture, override: tuple[str, str], group_setting: tuple | None
) -> None:
    """The checkpoint's param groups and scheduler base rates came back whole: lr 0.01 trained on at 3e-3 while
    config.yaml and the receipt recorded 0.01 (then it was refused, so a run stopped by divergence could not go
    on at a lower rate). Now the config's settings are the optimizer's, said once and receipted."""
    root = ("--trainer.default_root_dir", str(tmp_path))
    assert fit(*root, "--trainer.max_steps", "3") == 0
    run = tmp_path / read_latest(tmp_path)
    capsys.readouterr()
    assert fit(*root, "--trainer.max_steps", "6", "--ckpt_path", "last", *override) == 0
    said = capsys.readouterr().err
    receipts = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    resumed = next(r["body"] for r in receipts if r["body"].get("event") == "resumed")
    changed = {key: (before, now) for key, before, now in resumed["changed_settings"]}
    assert changed.pop("trainer.max_steps") == (3, 6)
    if override:
        key = override[0].removeprefix("--").replace(".init_args.", ".")
        assert changed == {key: (changed[key][0], yaml.safe_load(override[1]))}, changed
        assert f"continues with settings its config.yaml had otherwise ({key}: " in said
    else:
        assert changed == {} and "had otherwise" not in said
    # The fixture's cosine decays over max_steps (decay_steps null): a longer run stretches it, which is said.
    stretched = "its learning-rate schedule decays over the whole fit (model.init_args.optimizer.decay_steps is null)"
    assert (stretched in said) == ("decay_steps" not in "".join(override)), said
    if not override:
        assert "(give --model.init_args.optimizer.decay_steps 3 to keep that)" in said
    if group_setting is not None:  # what the optimizer trained steps 4-6 with
        name, value = group_setting
        groups = latest_checkpoint(tmp_path)["optimizer_states"][0]["param_groups"]
        assert all(pytest.approx(value) == (tuple(g[name]) if name == "betas" else g[name]) for g in groups), groups
        if name == "initial_lr":
            steps = {r["body"]["step_out"]: r["body"] for r in receipts if r["kind"] == "trainer_step"}
            step_4 = steps[4]["lr"]
            # The rate the receipt records after step 4: the new base rate at the schedule's point (warmup 2, cosine
            # to max_steps 6, the fixture's), not the old one's 3e-3 there.
            assert step_4 == pytest.approx(0.01 * warmup_cosine(2, 6, 0.1)(4))


@pytest.mark.parametrize("every", [3, 4], ids=["checkpoint due", "checkpoint not due"])
def test_a_sigterm_during_validation_pauses_after_it_and_keeps_its_eval(
    tmp_path: Path, uninterrupted: tuple[dict, list, Path], every: int
) -> None:
    """Lightning stops mid-validation on SIGTERM; the step's checkpoint, written before the validation, then resumed
    past it: the run's receipts and metrics lost that evaluation for good. After a step whose checkpoint was not due
    (every 4), the run pauses at step 4 and the line says so (it said "after a checkpoint")."""
    ids = tmp_path / "ids.jsonl"
    stopped = callbacks_config(tmp_path / "term.json", ("RecordConsumed", {"path": str(ids)}),
                               ("SigtermInValidation", {"step": 6}))  # fmt: skip
    common = (*DATA, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", str(N),
              "--checkpoint.every_n_train_steps", str(every))  # fmt: skip
    result = fit_subprocess(*common, "--config", stopped)
    assert result.returncode == 143, result.stderr[-2000:]
    assert latest_checkpoint(tmp_path)["global_step"] == 6 if every == 3 else 4  # (a resume replays 5 and 6)
    said, run_id = result.stderr.strip().splitlines()[-1], read_latest(tmp_path)
    flags = f"--trainer.default_root_dir {tmp_path} --ckpt_path last"
    assert said == (f"lit_psion: paused by SIGTERM at step 6, checkpointed; continue run {run_id} with {flags}"
                    if every == 3 else f"lit_psion: paused by SIGTERM at step 6; continue run {run_id} with "
                    f"{flags} from its latest durable checkpoint, step 4 (the steps after it train again)")
    resume = callbacks_config(tmp_path / "cb.json", ("RecordConsumed", {"path": str(ids)}))
    assert fit(*common, "--config", resume, "--ckpt_path", "last") == 0
    _assert_same_run(latest_checkpoint(tmp_path), consumed(ids), uninterrupted)
    evals = [json.loads(line)["body"]["step"] for line in (tmp_path / read_latest(tmp_path) / "receipts.jsonl")
             .read_text().splitlines() if '"kind": "eval"' in line]  # fmt: skip
    reference = [json.loads(line)["body"]["step"] for line in (uninterrupted[2] / "receipts.jsonl")
                 .read_text().splitlines() if '"kind": "eval"' in line]  # fmt: skip
    # every 4: the replay of steps 5 and 6 validates step 6 again, and its receipt says so
    assert (evals if every == 3 else sorted(set(evals))) == reference and 6 in evals


def test_a_resume_reads_its_receipt_log_through_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which checkpoints the log receipted, the chain against every anchor and the log the fit appends to are
    one verification of the same bytes (a long run's log costs ~0.1 ms a receipt to verify), and the resumed run
    still verifies."""
    import lit_psion.core.chain as chain

    args = ("--trainer.default_root_dir", str(tmp_path), "--checkpoint.every_n_train_steps", "2")
    assert fit(*args, "--trainer.max_steps", "2") == 0
    verified = chain._verify_bytes
    calls: list[int] = []
    monkeypatch.setattr(chain, "_verify_bytes", lambda data, run_id: calls.append(len(data)) or verified(data, run_id))
    assert fit(*args, "--trainer.max_steps", "4", "--ckpt_path", "last") == 0
    assert len(calls) == 1
    run = tmp_path / read_latest(tmp_path)
    result = chain.verify_log(run / "receipts.jsonl", run_id=run.name)
    assert result.ok and result.sealed and len(calls) == 2  # the grown log: other bytes, judged anew


@pytest.mark.parametrize("kill", [("KillBeforeDurableReceipt", {"step": 9}), ("KillAfterSeal", {})],
                         ids=["before-the-last-checkpoints-receipt", "after-the-seal"])  # fmt: skip
def test_a_kill_at_the_end_of_a_fit_is_completed_by_the_same_command(tmp_path: Path, kill: tuple[str, dict],
                                                                      capsys: pytest.CaptureFixture) -> None:
    """Killed after its last checkpoint, the run stayed `active` for good: `--ckpt_path last` with the same
    max_steps said 'nothing to train' (exit 2), and doctor called the run ok."""
    from lit_psion.cli import main

    common = ("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "9")
    killed = fit_subprocess(*common, "--config", callbacks_config(tmp_path / "kill.json", kill))
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_dir = tmp_path / read_latest(tmp_path)
    assert read_json(run_dir / "run.json")["status"] == "active"
    weights = latest_checkpoint(tmp_path)["state_dict"]
    assert fit(*common, "--ckpt_path", "last") == 0
    record = read_json(run_dir / "run.json")
    assert (record["status"], record["global_step"]) == ("completed", 9)
    assert_tree_equal(latest_checkpoint(tmp_path)["state_dict"], weights)  # trained nothing more
    kinds = [json.loads(line)["kind"] for line in (run_dir / "receipts.jsonl").read_text().splitlines()]
    assert kinds[-2:] == ["training_run", "chain_seal"] and kinds.count("trainer_step") == 9
    capsys.readouterr()
    assert main(["doctor", str(run_dir)]) == 0
    assert "ok   checkpoints/step-000009: 2 files match the manifest and its receipt" in capsys.readouterr().out
    assert fit(*common, "--ckpt_path", "last") == 2  # completed now: nothing left to finish


def test_a_sigterm_inside_an_accumulation_window_pauses_at_the_windows_end_and_resumes_bitwise(
    tmp_path: Path,
) -> None:
    """In one process Lightning stopped after the signalled micro-batch: the checkpoint held half a step's batches
    (its cursor past a micro-batch whose gradient was lost) and the resumed run trained other steps, exit 0."""
    accumulating = (*DATA, "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "6")
    reference = tmp_path / "reference"
    assert fit(*accumulating, "--trainer.default_root_dir", str(reference)) == 0
    stopped = callbacks_config(tmp_path / "term.json", ("SigtermAt", {"step": 4}))  # in step 4's first micro-batch
    root = tmp_path / "stopped"
    result = fit_subprocess(*accumulating, "--trainer.default_root_dir", str(root), "--config", stopped)
    assert result.returncode == 143, result.stderr[-2000:]
    paused = latest_checkpoint(root)
    assert paused["global_step"] == 4  # the whole step: both its micro-batches
    assert fit(*accumulating, "--trainer.default_root_dir", str(root), "--ckpt_path", "last") == 0
    resumed, uninterrupted = latest_checkpoint(root), latest_checkpoint(reference)
    assert_tree_equal(resumed["state_dict"], uninterrupted["state_dict"], "state_dict")
    assert_tree_equal(resumed["optimizer_states"], uninterrupted["optimizer_states"], "optimizer_states")


class SigtermInTheModulesHook(DecoderLM):
    """SIGTERM to this process from the module's own ``on_train_batch_end`` at the step the environment names: after
    the checkpoint callback's hook, before Lightning looks for the signal."""

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.trainer.ckpt_path is None and self.trainer.global_step == int(os.environ["LIT_PSION_TEST_TERM_AT"]):
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize(("at", "kept"), [(4, 4), (5, 3)], ids=["mid-epoch", "an epoch's last step"])
def test_a_sigterm_after_the_steps_checkpoint_hook_still_checkpoints_the_step(
    tmp_path: Path, uninterrupted: tuple[dict, list, Path], monkeypatch: pytest.MonkeyPatch, at: int, kept: int
) -> None:
    """The signal came after the checkpoint callback had looked for it: the run paused with no checkpoint of its step
    (before the first scheduled one, none at all: the resume exited 4), and the line said "after a checkpoint". At an
    epoch's end (5 batches here) the loop's state is the next epoch's: the run pauses at its last checkpoint."""
    config = tmp_path / "tiny.yaml"
    config.write_text(Path(TINY).read_text().replace("lit_psion.models.DecoderLM",
                                                     "tests.test_resume.SigtermInTheModulesHook"))  # fmt: skip
    monkeypatch.setenv("LIT_PSION_TEST_TERM_AT", str(at))
    common = (*DATA, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", str(N),
              "--trainer.log_every_n_steps", "1")  # fmt: skip
    result = fit_subprocess(*common, config=str(config))
    assert result.returncode == 143, result.stderr[-2000:]
    assert latest_checkpoint(tmp_path)["global_step"] == kept
    said = result.stderr.strip().splitlines()[-1]
    assert said.startswith(f"lit_psion: paused by SIGTERM at step {at}" + (", checkpointed;" if at == kept else ";"))
    assert fit(*common, "--ckpt_path", "last", config=str(config)) == 0
    assert_tree_equal(latest_checkpoint(tmp_path)["state_dict"], uninterrupted[0]["state_dict"])
    rows = _train_rows(tmp_path / read_latest(tmp_path))
    assert [step for step, _ in rows] == [str(step) for step in range(N)]  # each step's row once, at its own step


def test_a_pinned_data_setting_that_changed_nothing_is_recorded_but_not_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--data.documents paragraph`` where ``auto`` had resolved to it: the resume trains bitwise as the run would
    have, yet was told "from here it is not the run an uninterrupted fit would give"."""
    root = ("--trainer.default_root_dir", str(tmp_path))
    assert fit(*root, "--trainer.max_steps", "3") == 0
    run = tmp_path / read_latest(tmp_path)
    assert json.loads((run / "data_manifest.json").read_text())["documents"] == "paragraph"
    capsys.readouterr()
    assert fit(*root, "--trainer.max_steps", "6", "--ckpt_path", "last", "--data.documents", "paragraph") == 0
    assert "had otherwise" not in capsys.readouterr().err
    receipts = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    resumed = next(r["body"] for r in receipts if r["body"].get("event") == "resumed")
    assert ["data.documents", "auto", "paragraph"] in resumed["changed_settings"]
