"""Exactly-once data across world sizes: one global order, one global cursor, each rank its slice.

``data.batch_size`` is the global batch. Rank r of w trains on the contiguous slice r of each global batch;
the global batches, and the cursor every rank's batch carries, are a single process's, so a loader state
written at one world size resumes at any other on exactly the next global batch. A world size that does not
divide the global batch is refused at setup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import RunningStage
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from lit_psion.core.errors import DataConfigError
from lit_psion.datamodules import CorpusDataModule, Cursor, ReplayBatchSampler, ReplaySampler
from lit_psion.datamodules.replay import IndexBatch
from lit_psion.nn.decoder import Decoder, DecoderConfig
from tests.helpers import REPO_ROOT, TINY, callbacks_config

SAMPLES, SEED = 50, 3
# (world size, global batch): every world size 1..4 with batch sizes it divides, including batch == world.
GRID = [(w, b) for w in (1, 2, 3, 4) for b in (w, 4, 6, 12) if b % w == 0]


def steps(world: int, rank: int, batch: int, cursor: Cursor, count: int) -> list[IndexBatch]:
    """The first ``count`` IndexBatches rank ``rank`` of ``world`` trains on from ``cursor``, across epochs.

    Calls ``set_epoch`` at each epoch start, as Lightning's fit loop does.
    """
    sampler = ReplayBatchSampler(ReplaySampler(SAMPLES, SEED, cursor), batch, rank=rank, world_size=world)
    taken: list[IndexBatch] = []
    epoch = cursor.epoch
    while len(taken) < count:
        sampler.set_epoch(epoch)
        taken.extend(list(sampler)[: count - len(taken)])
        epoch += 1
    return taken


@pytest.mark.parametrize(("world", "batch"), GRID)
@pytest.mark.parametrize("where", ["start", "mid-epoch", "last batch of an epoch", "second epoch"])
def test_the_ranks_slices_make_up_the_single_process_global_batch_of_every_step(
    world: int, batch: int, where: str
) -> None:
    per_epoch = SAMPLES // batch
    position = {"start": 0, "mid-epoch": 2, "last batch of an epoch": per_epoch - 1, "second epoch": 1}[where]
    cursor = Cursor(epoch=int(where == "second epoch"), position=position * batch)
    count = per_epoch + 2  # always crosses into the next epoch
    single = steps(1, 0, batch, cursor, count)
    ranks = [steps(world, rank, batch, cursor, count) for rank in range(world)]
    assert any(b.cursor.epoch > cursor.epoch for b in single), "the grid must cross an epoch boundary"
    for k, expected in enumerate(single):
        slices = [ranks[rank][k] for rank in range(world)]
        assert [i for s in slices for i in s.indices] == expected.indices, f"step {k}"
        assert all(len(s.indices) == batch // world for s in slices)
        assert all(s.cursor == expected.cursor and s.global_indices == expected.indices for s in slices)


def test_a_sampler_refuses_slices_it_cannot_make_equal() -> None:
    with pytest.raises(ValueError, match="cannot slice batches of 10"):
        ReplayBatchSampler(ReplaySampler(SAMPLES, SEED), 10, rank=0, world_size=3)
    with pytest.raises(ValueError, match="drop_last=False"):
        ReplayBatchSampler(ReplaySampler(SAMPLES, SEED), 10, drop_last=False, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank 2 is not in a world of size 2"):
        ReplayBatchSampler(ReplaySampler(SAMPLES, SEED), 10, rank=2, world_size=2)


# -- through the DataModule -------------------------------------------------------------------------


def corpus(cache: Path, batch_size: int = 12) -> CorpusDataModule:
    return CorpusDataModule(files="fixtures/tiny_corpus.txt", tokenizer="char", block_size=32, sample_stride=16,
                            batch_size=batch_size, cache_dir=str(cache))  # fmt: skip


def on_rank(data: CorpusDataModule, rank: int, world: int, tmp: Path) -> CorpusDataModule:
    """``data`` set up for fit by a (stand-in) trainer of rank ``rank`` in a world of ``world``."""
    data.trainer = SimpleNamespace(global_rank=rank, world_size=world, training=True, callbacks=[],
                                   default_root_dir=str(tmp), lightning_module=None)  # fmt: skip
    data.setup("fit")
    return data


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("written_at", [1, 2, 3])
@pytest.mark.parametrize("resumed_at", [1, 2, 3, 4])
def test_a_cursor_written_at_one_world_size_resumes_at_another_on_the_next_global_batch(
    written_at: int, resumed_at: int, cache: Path, tmp_path: Path
) -> None:
    single = [b for b, _ in zip(on_rank(corpus(cache), 0, 1, tmp_path).train_dataloader(), range(6), strict=False)]
    writers = [on_rank(corpus(cache), rank, written_at, tmp_path) for rank in range(written_at)]
    loaders = [data.train_dataloader() for data in writers]
    for data, loader in zip(writers, loaders, strict=True):
        for batch, _ in zip(loader, range(3), strict=False):
            data.on_after_batch_transfer(batch, 0)  # what Lightning calls for each batch it trains on
    states = [loader.state_dict() for loader in loaders]
    assert states == [{"epoch": 0, "position": 3 * 12}] * written_at  # global, the same on every rank
    resumed = []
    for rank in range(resumed_at):
        loader = on_rank(corpus(cache), rank, resumed_at, tmp_path).train_dataloader()
        loader.load_state_dict(states[0])  # what rank 0 checkpointed
        resumed.append([b for b, _ in zip(loader, range(3), strict=False)])
    for k, expected in enumerate(single[3:]):
        slices = [resumed[rank][k] for rank in range(resumed_at)]
        assert torch.cat([s["sample_ids"] for s in slices]).tolist() == expected["sample_ids"].tolist()
        assert torch.equal(torch.cat([s["input_ids"] for s in slices]), expected["input_ids"])
        for s in slices:
            assert s["cursor"] == expected["cursor"] and torch.equal(s["global_sample_ids"], expected["sample_ids"])


@pytest.mark.parametrize(("batch", "world", "nearest"), [(10, 3, "9 or 12"), (7, 2, "6 or 8"), (2, 4, "4")])
def test_a_world_size_that_does_not_divide_the_global_batch_is_refused_at_setup(
    batch: int, world: int, nearest: str, cache: Path, tmp_path: Path
) -> None:
    with pytest.raises(DataConfigError) as refused:
        on_rank(corpus(cache, batch), 0, world, tmp_path)
    message = str(refused.value)
    assert refused.value.exit_code == 2 and "\n" not in message
    assert f"batch_size {batch}" in message and f"world size {world}" in message
    assert f"--data.batch_size {nearest})" in message


def test_validation_reads_the_whole_split_on_every_rank(cache: Path, tmp_path: Path) -> None:
    single = [b["sample_ids"].tolist() for b in on_rank(corpus(cache), 0, 1, tmp_path).val_dataloader()]
    assert [b["sample_ids"].tolist() for b in on_rank(corpus(cache), 1, 2, tmp_path).val_dataloader()] == single


def test_lightning_leaves_the_training_sampler_alone_under_ddp(cache: Path, tmp_path: Path) -> None:
    loader = on_rank(corpus(cache), 1, 2, tmp_path).train_dataloader()
    trainer = L.Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False, enable_checkpointing=False)
    connector = trainer._data_connector  # the code path fit takes; the 2-process run below is the public proof
    assert isinstance(loader.sampler, DistributedSampler)
    assert connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING) is loader
    plain = DataLoader(list(range(8)), batch_size=2)  # the control: a loader Lightning does re-deal
    assert connector._prepare_dataloader(plain, shuffle=True, mode=RunningStage.TRAINING) is not plain


def test_data_parallel_slices_train_the_global_batch_mean(cache: Path, tmp_path: Path) -> None:
    """DDP averages the ranks' gradients of their slice means: with equal slices, the global batch mean's."""
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(n_layer=2, n_head=2, d_model=16, vocab_size=32, block_size=32, dropout=0.0))

    def gradients(batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        model.zero_grad()
        logits = model(batch["input_ids"])  # (B, T, vocab)
        F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten()).backward()
        return [p.grad.clone() for p in model.parameters()]

    whole = gradients(next(iter(on_rank(corpus(cache), 0, 1, tmp_path).train_dataloader())))
    for world in (2, 3, 4):
        per_rank = [gradients(next(iter(on_rank(corpus(cache), r, world, tmp_path).train_dataloader())))
                    for r in range(world)]  # fmt: skip
        averaged = [torch.stack(g).mean(0) for g in zip(*per_rank, strict=True)]
        for a, b in zip(averaged, whole, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- a real 2-process DDP run ---------------------------------------------------------------------------

# 572 training samples in global batches of 64: 8 steps an epoch, so 12 steps cross an epoch boundary.
# No dropout, and a cosine decay fixed at 18 steps, so runs of 12 and 18 steps train the same math.
SETTINGS = ["--data.init_args.batch_size", "64", "--model.init_args.decoder.dropout", "0.0",
            "--model.init_args.optimizer.decay_steps", "18", "--checkpoint.keep_last_k", "10"]  # fmt: skip


def fit_with_env(root: Path, *args: str) -> None:
    command = [sys.executable, "-m", "lit_psion", "fit", "--config", TINY, "--trainer.default_root_dir", str(root),
               *SETTINGS, *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}  # inherited by Lightning's rank 1
    env.pop("PL_GLOBAL_SEED", None)  # left by in-process fits
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]


def recorder(root: Path) -> str:
    """A config overlay recording each rank's batches to ``{root}.rank{r}``."""
    return callbacks_config(root.with_suffix(".json"), ("RecordRankBatches", {"path": str(root)}))


def records(path: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}


def weights(root: Path, step: int) -> dict[str, torch.Tensor]:
    (checkpoint,) = root.glob(f"*/checkpoints/step-{step:06d}/model.safetensors")
    return load_file(checkpoint)


@pytest.mark.slow
def test_ddp_at_world_2_consumes_the_single_process_global_batches_and_resumes_at_world_1(tmp_path: Path) -> None:
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    fit_with_env(single, "--config", recorder(single), "--trainer.max_steps", "18")
    fit_with_env(ddp, "--config", recorder(ddp), "--trainer.max_steps", "12", "--trainer.strategy", "ddp",
                 "--trainer.devices", "2", "--trainer.accelerator", "cpu")  # fmt: skip
    expected = records(Path(f"{single}.rank0"))
    rank0, rank1 = records(Path(f"{ddp}.rank0")), records(Path(f"{ddp}.rank1"))
    assert sorted(rank0) == sorted(rank1) == list(range(12)) and sorted(expected) == list(range(18))
    for step in range(12):
        assert rank0[step]["world_size"] == 2 and len(rank0[step]["ids"]) == len(rank1[step]["ids"]) == 32
        assert rank0[step]["ids"] + rank1[step]["ids"] == expected[step]["ids"], f"step {step}"
        assert rank0[step]["cursor"] == rank1[step]["cursor"] == expected[step]["cursor"]
        assert rank0[step]["global_ids"] == rank1[step]["global_ids"] == expected[step]["ids"]
    assert expected[11]["cursor"] == [1, 4 * 64], "the run must cross an epoch boundary"
    for name, tensor in weights(single, 12).items():  # the same math as one process, up to summation order
        torch.testing.assert_close(weights(ddp, 12)[name], tensor, rtol=1e-4, atol=1e-5, msg=name)

    Path(f"{ddp}.rank0").unlink()
    fit_with_env(ddp, "--config", recorder(ddp), "--trainer.max_steps", "18", "--ckpt_path", "last")  # world 1
    resumed = records(Path(f"{ddp}.rank0"))
    assert sorted(resumed) == list(range(12, 18)), "continues on the next global batch, none replayed or skipped"
    for step in range(12, 18):
        assert resumed[step]["world_size"] == 1
        assert resumed[step]["ids"] == expected[step]["ids"] and resumed[step]["cursor"] == expected[step]["cursor"]
    for name, tensor in weights(single, 18).items():
        torch.testing.assert_close(weights(ddp, 18)[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
