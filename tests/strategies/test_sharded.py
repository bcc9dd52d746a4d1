"""The sharded strategy (FSDP2 at world 2 on CPU): verified sharded checkpoints, exact resume, consolidation.

Every run here is a real ``python -m lit_psion fit`` with 2 gloo ranks (Lightning's launcher), so the
shards, the digests each rank reports and rank 0's seal are the real ones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as safetensors_load
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from lit_psion.checkpoint_io import first_failure, load_trainer_state, verified_reader
from lit_psion.cli import main
from lit_psion.core import RunLayout, read_json, sha256_file
from lit_psion.core.checkpoint import MANIFEST_FILE, verify_checkpoint
from lit_psion.core.errors import CheckpointError
from lit_psion.core.layout import LATEST_FILE
from lit_psion.core.pointer import read_pointer
from lit_psion.core.run import read_latest
from lit_psion.runs import load_run
from tests.helpers import REPO_ROOT, TINY, assert_tree_equal, callbacks_config, subprocess_env

N = 12
FSDP = ("--config", "configs/overlays/fsdp.yaml", "--trainer.accelerator", "cpu", "--trainer.devices", "2")
# 46 samples at stride 200: 5 global batches of 8 per epoch (4 per rank); the schedule is pinned to N.
DATA = ("--data.sample_stride", "200", "--model.init_args.optimizer.decay_steps", str(N),
        "--checkpoint.every_n_train_steps", "3")  # fmt: skip
SHARD_FILES = {"__0_0.distcp", "__1_0.distcp", ".metadata", "trainer_state.pt"}


def run_fit(root: Path, *args: str, callbacks: tuple[tuple[str, dict], ...] = (), strategy: tuple = FSDP,
            config: str = TINY, data: tuple = DATA) -> subprocess.CompletedProcess:  # fmt: skip
    """``python -m lit_psion fit`` at world 2 in its own session (so a test can kill every rank at once)."""
    extra = ("--config", callbacks_config(root.parent / f"{root.name}-cb.json", *callbacks)) if callbacks else ()
    command = [sys.executable, "-m", "lit_psion", "fit", "--config", config, *strategy, *data, *extra,
               "--trainer.default_root_dir", str(root), *args]  # fmt: skip
    env = subprocess_env(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, cwd=REPO_ROOT,
                          start_new_session=True)  # fmt: skip


def run_dir(root: Path) -> Path:
    return root / read_latest(root)


def sharded_state(checkpoint: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every tensor of a sharded checkpoint gathered (model and optimizer), and its trainer state."""
    verified = verify_checkpoint(checkpoint)
    gathered: dict[str, Any] = {}
    _load_state_dict(gathered, storage_reader=verified_reader(verified), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)  # fmt: skip
    return gathered, load_trainer_state(verified)


def steps(run: Path) -> dict[int, dict[str, Any]]:
    """The last trainer_step receipt of each step (a resumed run re-trains the steps after its checkpoint)."""
    chain = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    return {r["body"]["step_out"]: r["body"] for r in chain if r["kind"] == "trainer_step"}


def assert_same_training(run: Path, reference: Path) -> None:
    (tensors, state), (expected, expected_state) = sharded_state(run / "checkpoints" / "step-000012"), sharded_state(
        reference / "checkpoints" / "step-000012")  # fmt: skip
    assert_tree_equal(tensors, expected, "shards")  # model and optimizer, bitwise
    assert_tree_equal(state["lr_schedulers"], expected_state["lr_schedulers"], "lr_schedulers")
    assert state["global_step"] == expected_state["global_step"] == N
    ours, theirs = steps(run), steps(reference)
    assert sorted(ours) == list(range(1, N + 1))
    assert [ours[s]["batch_digest"] for s in ours] == [theirs[s]["batch_digest"] for s in ours]
    assert [ours[s]["loss"] for s in ours] == [theirs[s]["loss"] for s in ours]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sharded")
    result = run_fit(root, "--trainer.max_steps", str(N))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir(root)


def test_each_checkpoint_lists_every_ranks_shard_and_the_chain_receipts_it(uninterrupted: Path) -> None:
    layout = RunLayout.of(uninterrupted)
    assert [p.name for p in layout.checkpoint_dirs()] == ["step-000006", "step-000009", "step-000012"]
    for checkpoint in layout.checkpoint_dirs():
        manifest = read_json(checkpoint / MANIFEST_FILE)
        assert set(manifest["files"]) == SHARD_FILES
        for name, record in manifest["files"].items():
            assert sha256_file(checkpoint / name) == record["sha256"]
            assert (checkpoint / name).stat().st_size == record["bytes"]
    pointer = read_pointer(layout)
    assert pointer.checkpoint == "step-000012"
    assert pointer.manifest_sha256 == sha256_file(layout.checkpoint(N) / MANIFEST_FILE)
    chain = [json.loads(line) for line in layout.receipts.read_text().splitlines()]
    durable = [r["body"] for r in chain if r["kind"] == "checkpoint" and r["body"]["durability"] == "durable"]
    assert [r["checkpoint"] for r in durable] == [f"checkpoints/step-{s:06d}" for s in (3, 6, 9, 12)]
    assert durable[-1]["manifest_digest"] == pointer.manifest_sha256
    assert not list(layout.checkpoints.glob(".step-*"))  # no staging directory left behind
    assert main(["receipts", "verify", str(uninterrupted)]) == 0


@pytest.mark.slow  # default-suite budget: a multi-process scenario of ~15-35 s, run by CI's slow step
def test_a_sigkilled_world_2_run_resumes_bitwise_equal_to_the_uninterrupted_one(
    tmp_path: Path, uninterrupted: Path
) -> None:
    killed = run_fit(tmp_path, "--trainer.max_steps", str(N), callbacks=(("KillGroupAt", {"step": 8}),))
    assert killed.returncode == -9, killed.stderr[-3000:]
    run = run_dir(tmp_path)
    assert read_pointer(RunLayout.of(run)).step == 6  # steps 7 and 8 died with the ranks
    resumed = run_fit(tmp_path, "--trainer.max_steps", str(N), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "holds rows up to" not in resumed.stderr  # rank 1 said its dummy logger lost rows ("<bound method ...")
    assert run_dir(tmp_path) == run
    assert_same_training(run, uninterrupted)
    assert main(["receipts", "verify", str(run)]) == 0


@pytest.mark.slow
def test_async_writes_are_receipted_in_flight_then_durable_and_train_the_same_run(
    tmp_path: Path, uninterrupted: Path
) -> None:
    result = run_fit(tmp_path, "--trainer.max_steps", str(N), "--checkpoint.async_write", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    run = run_dir(tmp_path)
    assert_same_training(run, uninterrupted)
    chain = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    states = [(r["body"]["checkpoint"], r["body"]["durability"]) for r in chain if r["kind"] == "checkpoint"]
    for step in (3, 6, 9, 12):
        name = f"checkpoints/step-{step:06d}"
        assert states.index((name, "async_write_in_flight")) < states.index((name, "durable")), states
    assert main(["receipts", "verify", str(run)]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["sigterm", "sigkill-async"])
def test_a_world_2_run_stopped_by_sigterm_or_killed_mid_async_writes_resumes_bitwise(
    stop: str, tmp_path: Path, uninterrupted: Path
) -> None:
    writes = ("--checkpoint.async_write", "true") if stop == "sigkill-async" else ()
    callback = ("SigtermAt", {"step": 7}) if stop == "sigterm" else ("KillGroupAt", {"step": 8})
    first = run_fit(tmp_path, "--trainer.max_steps", str(N), *writes, callbacks=(callback,))
    run = run_dir(tmp_path)
    if stop == "sigterm":  # every rank finishes step 7, checkpoints it and pauses
        assert first.returncode == 143, first.stderr[-3000:]
        assert read_pointer(RunLayout.of(run)).step == 7
        assert read_json(run / "run.json")["status"] == "paused"
    else:
        assert first.returncode == -9, first.stderr[-3000:]
    resumed = run_fit(tmp_path, "--trainer.max_steps", str(N), "--ckpt_path", "last", *writes)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(run, uninterrupted)
    assert main(["receipts", "verify", str(run)]) == 0


@pytest.mark.slow
def test_a_sigterm_pauses_every_ddp_rank_at_one_step_and_the_resume_is_bitwise(
    tmp_path: Path, ddp_uninterrupted: Path
) -> None:
    # Lightning's handler broadcast from inside the signal handler and hung DDP; StopAgreement agrees instead.
    # Rank 0's exit outlasts the 5 s poll of Lightning's child-process observer, which SIGKILLs every rank once
    # a child exits non-zero: rank 1 leaves after rank 0, so rank 0 still exits 143 and records the pause.
    callbacks = (("SigtermAt", {"step": 7}), ("SlowExitOnRankZero", {"seconds": 6}))
    first = run_fit(tmp_path, "--trainer.max_steps", str(N), strategy=DDP, callbacks=callbacks)
    assert first.returncode == 143, first.stderr[-3000:]
    run = run_dir(tmp_path)
    assert read_pointer(RunLayout.of(run)).step == 7 and read_json(run / "run.json")["status"] == "paused"
    resumed = run_fit(tmp_path, "--trainer.max_steps", str(N), "--ckpt_path", "last", strategy=DDP)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = (run / "checkpoints" / "step-000012" / "model.safetensors").read_bytes()
    assert final == (ddp_uninterrupted / "checkpoints" / "step-000012" / "model.safetensors").read_bytes()
    assert main(["receipts", "verify", str(run)]) == 0


def _flip(name: str):
    def tamper(checkpoint: Path) -> None:
        data = bytearray((checkpoint / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (checkpoint / name).write_bytes(bytes(data))

    return tamper


def _swap_shards(checkpoint: Path) -> None:
    a, b = checkpoint / "__0_0.distcp", checkpoint / "__1_0.distcp"
    a.rename(checkpoint / "tmp")
    b.rename(a)
    (checkpoint / "tmp").rename(b)


TAMPERING = {
    "rank 0 shard byte": (_flip("__0_0.distcp"), "__0_0.distcp' is corrupt"),
    "rank 1 shard byte": (_flip("__1_0.distcp"), "__1_0.distcp' is corrupt"),
    "dcp metadata byte": (_flip(".metadata"), ".metadata' is corrupt"),
    "trainer state byte": (_flip("trainer_state.pt"), "trainer_state.pt' is corrupt"),
    "shard deleted": (lambda c: (c / "__1_0.distcp").unlink(), "missing"),
    "shards swapped": (_swap_shards, "is corrupt"),
    "extra shard": (lambda c: (c / "__2_0.distcp").write_bytes(b"x"), "does not list: '__2_0.distcp'"),
    "shard symlinked": (lambda c: ((c / "__0_0.distcp").unlink(), (c / "__0_0.distcp").symlink_to(c / "__1_0.distcp")),
                        "symlink"),
}  # fmt: skip


@pytest.mark.parametrize("case", TAMPERING)
def test_a_tampered_shard_is_refused_and_ckpt_verify_falls_back_to_the_newest_that_verifies(
    case: str, tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture
) -> None:
    tamper, reason = TAMPERING[case]
    run = tmp_path / uninterrupted.name
    shutil.copytree(uninterrupted, run, symlinks=True)
    tamper(run / "checkpoints" / "step-000012")
    with pytest.raises(CheckpointError, match=r"corrupt|missing|does not list|symlink"):
        verify_checkpoint(run / "checkpoints" / "step-000012")
    assert main(["ckpt", "verify", str(run)]) == 4  # step-000012 is durable: its damage fails the check
    out, err = capsys.readouterr()
    assert "ok:" not in out and "(a resume would use step-000009)" in err  # what a resume would load; no "ok"
    assert "skipped step-000012" in err and reason in err
    assert "step-000012, a durable checkpoint the receipts record, does not verify" in err
    assert main(["fit", "--config", TINY, *FSDP, "--trainer.default_root_dir", str(tmp_path),
                 "--ckpt_path", str(run / "checkpoints" / "step-000012")]) == 4  # fmt: skip


def test_a_shard_changed_after_verification_is_refused_by_the_dcp_load_not_loaded(
    tmp_path: Path, uninterrupted: Path
) -> None:
    """Verification holds no shard; DCP's reads hash each shard again, so a swap in between is refused."""
    run = tmp_path / uninterrupted.name
    shutil.copytree(uninterrupted, run)
    checkpoint = run / "checkpoints" / "step-000012"
    verified = verify_checkpoint(checkpoint)
    assert not any(name.endswith(".distcp") for name in verified.contents)
    shutil.copy(run / "checkpoints" / "step-000009" / "__1_0.distcp", checkpoint / "__1_0.distcp")  # a real shard
    with pytest.raises(CheckpointException) as raised:  # DCP's wrapper of every rank's failure
        _load_state_dict({}, storage_reader=verified_reader(verified), planner=_EmptyStateDictLoadPlanner(),
                         no_dist=True)  # fmt: skip
    assert "changed after the checkpoint was verified" in str(first_failure(raised.value))
    assert main(["ckpt", "consolidate", str(run)]) == 0  # a fresh verification falls back to step 9
    assert (run / "consolidated" / "step-000009").is_dir()


@pytest.mark.slow
def test_a_run_resumed_past_a_corrupt_shard_falls_back_and_still_ends_bitwise_equal(
    tmp_path: Path, uninterrupted: Path
) -> None:
    first = run_fit(tmp_path, "--trainer.max_steps", "9")
    assert first.returncode == 0, first.stderr[-3000:]
    run = run_dir(tmp_path)
    _flip("__1_0.distcp")(run / "checkpoints" / "step-000009")
    resumed = run_fit(tmp_path, "--trainer.max_steps", str(N), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "using step-000006" in resumed.stderr
    assert_same_training(run, uninterrupted)


DDP = ("--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2")


@pytest.fixture(scope="module")
def ddp_uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    result = run_fit(root, "--trainer.max_steps", str(N), strategy=DDP)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir(root)


@pytest.mark.slow  # default-suite budget: a multi-process scenario of ~15-35 s, run by CI's slow step
def test_fsdp2_and_ddp_train_the_same_model_within_fp_tolerance(uninterrupted: Path, ddp_uninterrupted: Path) -> None:
    reference = ddp_uninterrupted
    ddp_weights = safetensors_load((reference / "checkpoints" / "step-000012" / "model.safetensors").read_bytes())
    shards, _ = sharded_state(uninterrupted / "checkpoints" / "step-000012")
    assert set(shards["state_dict"]) <= set(ddp_weights)
    for name, tensor in shards["state_dict"].items():
        torch.testing.assert_close(tensor, ddp_weights[name], rtol=1e-4, atol=1e-5, msg=name)
    ours, theirs = steps(uninterrupted), steps(reference)
    assert [ours[s]["batch_digest"] for s in ours] == [theirs[s]["batch_digest"] for s in ours]  # the same data
    torch.testing.assert_close(torch.tensor([ours[s]["loss"] for s in ours]),
                               torch.tensor([theirs[s]["loss"] for s in ours]), rtol=1e-4, atol=1e-5)  # fmt: skip
    for metric in ("telemetry/grad_norm", "telemetry/param_norm", "telemetry/update_norm"):  # over the whole model
        mine, theirs_ = _metric(uninterrupted, metric), _metric(reference, metric)
        assert len(mine) == N and mine.keys() == theirs_.keys(), metric
        torch.testing.assert_close(torch.tensor(list(mine.values())), torch.tensor(list(theirs_.values())),
                                   rtol=1e-4, atol=1e-6, msg=metric)  # fmt: skip


def _metric(run: Path, name: str) -> dict[int, float]:
    import csv

    with open(run / "metrics.csv") as handle:
        return {int(row["step"]): float(row[name]) for row in csv.DictReader(handle) if row.get(name)}


@pytest.mark.slow
def test_a_rank_that_cannot_hash_its_shard_fails_the_checkpoint_on_every_rank(tmp_path: Path) -> None:
    failing = (("ShardDigestFailsAt", {"step": 6, "rank": 1}),)
    result = run_fit(tmp_path, "--trainer.max_steps", str(N), callbacks=failing)
    assert result.returncode == 6, result.stderr[-3000:]
    assert "writing sharded checkpoint" in result.stderr and "Input/output error" in result.stderr
    layout = RunLayout.of(run_dir(tmp_path))
    assert [p.name for p in layout.checkpoint_dirs()] == ["step-000003"]  # nothing half-written
    assert not list(layout.checkpoints.glob(".step-*"))
    assert read_pointer(layout).step == 3
    assert main(["receipts", "verify", str(layout.run_dir)]) == 0
    assert read_json(layout.run_file)["failure_class"] == "checkpoint_flush_failed"


@pytest.mark.slow
def test_adapters_train_on_a_frozen_sharded_base(tmp_path: Path, uninterrupted: Path) -> None:
    base = tmp_path / "base" / uninterrupted.name
    shutil.copytree(uninterrupted, base)
    assert main(["ckpt", "consolidate", str(base)]) == 0
    result = run_fit(tmp_path / "ft", "--model", "lit_psion.models.AdapterLM", "--model.init_args.base_checkpoint",
                     str(base), "--data.tokenizer_file", str(base / "tokenizer.json"), "--model.init_args.targets",
                     "[lm_head, attn_qkv]", "--trainer.max_steps", "6")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = run_dir(tmp_path / "ft")
    assert main(["ckpt", "consolidate", str(run)]) == 0
    tuned = safetensors_load((run / "consolidated" / "step-000006" / "model.safetensors").read_bytes())
    frozen = safetensors_load((base / "consolidated" / "step-000012" / "model.safetensors").read_bytes())
    lora = [k for k in tuned if ".lora_" in k]
    assert lora and any(tuned[k].abs().sum() > 0 for k in lora if "lora_b" in k.lower())
    for name, tensor in frozen.items():  # the base is sharded, trained through, and untouched
        wrapped = name if name in tuned else name.replace(".weight", ".base.weight")
        assert torch.equal(tuned[wrapped], tensor), name
    assert main(["adapter", "export", str(run)]) == 0


@pytest.mark.slow
def test_mosaic_trains_sharded_as_ddp_trains_it_and_consolidates(tmp_path: Path) -> None:
    # FSDP2 warns that the sharded MosaicLM returns a view tensor, which an in-place op could break; this pins
    # that its gradients are DDP's (the unsharded model's, all-reduced): the same weights after 4 steps.
    mosaic = ("--trainer.max_steps", "4", "--model.init_args.optimizer.name", "adamw")
    every = ("--checkpoint.every_n_train_steps", "2")
    sharded = run_fit(tmp_path / "fsdp", *mosaic, config="configs/mosaic_commitment_cpu.yaml", data=every)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    ddp = run_fit(tmp_path / "ddp", *mosaic, config="configs/mosaic_commitment_cpu.yaml", data=every, strategy=DDP)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    run, reference = run_dir(tmp_path / "fsdp"), run_dir(tmp_path / "ddp")
    assert set(read_json(run / "checkpoints" / "step-000004" / MANIFEST_FILE)["files"]) == SHARD_FILES
    ddp_weights = safetensors_load((reference / "checkpoints" / "step-000004" / "model.safetensors").read_bytes())
    shards, _ = sharded_state(run / "checkpoints" / "step-000004")
    assert shards["state_dict"] and set(shards["state_dict"]) <= set(ddp_weights)
    for name, tensor in shards["state_dict"].items():
        torch.testing.assert_close(tensor, ddp_weights[name], rtol=1e-4, atol=1e-5, msg=name)
    ours, theirs = steps(run), steps(reference)
    assert sorted(ours) == [1, 2, 3, 4]
    assert [ours[s]["batch_digest"] for s in ours] == [theirs[s]["batch_digest"] for s in ours]
    torch.testing.assert_close(torch.tensor([ours[s]["loss"] for s in ours]),
                               torch.tensor([theirs[s]["loss"] for s in ours]), rtol=1e-4, atol=1e-5)  # fmt: skip
    assert main(["ckpt", "consolidate", str(run)]) == 0
    assert load_run(run).build()[0] is not None


REFUSED_AT_START = {
    "muon under fsdp": (("--model.init_args.optimizer.name", "muon"), "optimizer muon needs whole weight matrices"),
    "mixed precision on cpu": (("--trainer.strategy.init_args.param_dtype", "bf16"), "needs CUDA"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", REFUSED_AT_START)
def test_settings_the_sharded_strategy_cannot_honour_are_refused_in_one_line(case: str, tmp_path: Path) -> None:
    args, message = REFUSED_AT_START[case]
    result = run_fit(tmp_path, "--trainer.max_steps", "2", "--trainer.devices", "1", *args)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("lit_psion: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert not list(tmp_path.iterdir())  # no run directory, no latest_run.json: nothing was trained


def test_a_setting_refused_while_lightning_sets_up_leaves_the_resumed_run_as_it_was(
    tmp_path: Path, uninterrupted: Path
) -> None:
    """Muon is refused when the strategy builds the optimizer, after the callbacks' setup: a completed run asked to
    go on with it keeps its run.json (status, step), config.yaml and receipts byte for byte."""
    root = tmp_path / "runs"
    shutil.copytree(uninterrupted, root / uninterrupted.name)
    shutil.copy(uninterrupted.parent / LATEST_FILE, root / LATEST_FILE)
    files = ("run.json", "config.yaml", "receipts.jsonl", "data_manifest.json")
    before = {name: (root / uninterrupted.name / name).read_bytes() for name in files}
    result = run_fit(root, "--trainer.max_steps", "20", "--ckpt_path", "last", "--model.init_args.optimizer.name",
                     "muon")  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "optimizer muon needs whole weight matrices" in result.stderr
    assert {name: (root / uninterrupted.name / name).read_bytes() for name in files} == before
    assert sorted(p.name for p in root.iterdir()) == sorted([uninterrupted.name, LATEST_FILE])
    assert read_json(root / uninterrupted.name / "run.json")["status"] == "completed"


@pytest.mark.slow
def test_a_model_without_a_sharding_plan_is_refused(tmp_path: Path) -> None:
    result = run_fit(tmp_path, "--trainer.max_steps", "2", config="configs/graph_core_oscillators.yaml", data=(),
                     strategy=("--trainer.strategy", "sharded", "--trainer.accelerator", "cpu"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "has no sharding plan" in result.stderr
    assert not list(tmp_path.iterdir())  # refused while Lightning sets up: no half-written run takes over 'last'


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        (("--config", "configs/overlays/deepspeed_zero2.yaml"), "DeepSpeed needs a CUDA GPU"),
        (("--config", "configs/overlays/deepspeed_zero3.yaml"), "configs/overlays/fsdp.yaml"),
        (("--trainer.strategy", "deepspeed_stage_2"), "DeepSpeed needs a CUDA GPU"),
        (("--trainer.strategy", "fsdp"), "writes checkpoints lit_psion cannot verify"),
        (("--trainer.strategy", '{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"}'),
         "cannot verify"),
    ],
    ids=["zero2-overlay", "zero3-overlay", "deepspeed-name", "lightning-fsdp", "lightning-model-parallel"],
)
def test_engines_that_cannot_run_or_be_verified_here_are_refused_before_anything_is_written(
    strategy: tuple, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["fit", "--config", TINY, *strategy, "--trainer.default_root_dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_is_resumed_only_by_a_strategy_that_reads_its_layout(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "sharded"
    shutil.copytree(uninterrupted, root / uninterrupted.name)
    shutil.copy(uninterrupted.parent / LATEST_FILE, root / LATEST_FILE)
    before = (root / uninterrupted.name / "run.json").read_bytes()
    assert main(["fit", "--config", TINY, "--trainer.default_root_dir", str(root), "--ckpt_path", "last",
                 "--trainer.max_steps", "20"]) == 4  # fmt: skip
    assert "is a sharded checkpoint" in capsys.readouterr().err
    assert main(["fit", "--config", TINY, "--trainer.default_root_dir", str(root), "--ckpt_path", "last",
                 "--trainer.strategy", "transactional_ddp", "--trainer.max_steps", "20"]) == 4  # fmt: skip
    assert "reads single ones" in capsys.readouterr().err
    assert (root / uninterrupted.name / "run.json").read_bytes() == before  # the completed run is untouched
    single = tmp_path / "single"
    assert main(["fit", "--config", TINY, "--trainer.default_root_dir", str(single), "--trainer.max_steps", "3"]) == 0
    run_json = (run_dir(single) / "run.json").read_bytes()
    capsys.readouterr()
    assert main(["fit", "--config", TINY, *FSDP, "--trainer.default_root_dir", str(single), "--ckpt_path", "last",
                 "--trainer.max_steps", "6"]) == 4  # fmt: skip
    assert "is a single checkpoint, but --trainer.strategy ShardedStrategy reads sharded" in capsys.readouterr().err
    assert main(["fit", "--config", TINY, *FSDP, "--trainer.strategy", "transactional_sharded",
                 "--trainer.default_root_dir", str(single), "--ckpt_path", "last", "--trainer.max_steps", "6"]) == 4
    assert "but --trainer.strategy transactional_sharded reads sharded" in capsys.readouterr().err
    assert (run_dir(single) / "run.json").read_bytes() == run_json
    assert main(["ckpt", "consolidate", str(run_dir(single))]) == 2  # a wrong argument: the checkpoint is fine
    assert "is not sharded; it already is one model.safetensors" in capsys.readouterr().err


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_forged_dcp_metadata_under_a_rewritten_manifest_runs_no_code(tmp_path: Path, uninterrupted: Path) -> None:
    import pickle

    from lit_psion.consolidation import consolidate

    forged = tmp_path / "elsewhere" / "step-000012"  # outside any run: no receipt vouches for its manifest
    shutil.copytree(uninterrupted / "checkpoints" / "step-000012", forged)
    marker = tmp_path / "code-ran"
    (forged / ".metadata").write_bytes(pickle.dumps(_Evil(marker)))
    manifest = read_json(forged / MANIFEST_FILE)
    manifest["files"][".metadata"] = {"sha256": sha256_file(forged / ".metadata"),
                                      "bytes": (forged / ".metadata").stat().st_size}  # fmt: skip
    (forged / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="is not DCP metadata"):
        consolidate(verify_checkpoint(forged), tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_a_shard_removed_with_its_manifest_record_is_refused_by_ckpt_verify_as_by_a_load(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture
) -> None:
    """`ckpt verify` said "ok (1 shards ...)" of a checkpoint whose DCP metadata still names the removed shard, which
    consolidate and a resume then asked for."""
    from lit_psion.cli import main

    forged = tmp_path / "elsewhere" / "step-000012"
    shutil.copytree(uninterrupted / "checkpoints" / "step-000012", forged)
    (forged / "__1_0.distcp").unlink()
    manifest = read_json(forged / MANIFEST_FILE)
    del manifest["files"]["__1_0.distcp"]
    (forged / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert verify_checkpoint(forged).sharded  # the files match the manifest
    assert main(["ckpt", "verify", str(forged)]) == 4
    assert "its .metadata names shard file '__1_0.distcp', which its manifest does not list" in capsys.readouterr().err
