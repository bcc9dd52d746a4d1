"""Deterministic, resumable sample order shared by lit_psion's DataModules.

The order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone, so any process can
recompute it. A cursor ``(epoch, position)`` says how many samples of that order were consumed;
a loader built from a cursor continues exactly there without reading consumed data again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


@dataclasses.dataclass(frozen=True, slots=True)
class Cursor:
    epoch: int = 0
    """The epoch whose permutation is being consumed."""
    position: int = 0
    """How many samples of that permutation were consumed."""


class IndexBatch(list):
    """A batch of sample indices that also says where in the order it ends."""

    epoch: int
    end: int


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    if not shuffle:
        return torch.arange(num_samples)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


class ReplaySampler(Sampler[int]):
    """Sample indices in the (seed, epoch) order, from the cursor's position in the cursor's epoch.

    Lightning calls :meth:`set_epoch` at the start of every epoch; an epoch other than the
    cursor's starts from position 0.
    """

    def __init__(self, num_samples: int, seed: int, cursor: Cursor = Cursor(), shuffle: bool = True) -> None:
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.cursor = cursor
        self.epoch = cursor.epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start(self) -> int:
        return self.cursor.position if self.epoch == self.cursor.epoch else 0

    def __iter__(self) -> Iterator[int]:
        yield from epoch_order(self.num_samples, self.seed, self.epoch, self.shuffle)[self.start() :].tolist()

    def __len__(self) -> int:
        return self.num_samples


class ReplayBatchSampler(Sampler[IndexBatch]):
    """Full batches of a :class:`ReplaySampler`, each an :class:`IndexBatch` that knows where it ends.

    Used as the DataLoader's ``sampler`` with ``batch_size=None``, so Lightning sees (and calls
    ``set_epoch`` on) this object, and never rebuilds it as it would a ``batch_sampler``.
    """

    def __init__(self, sampler: ReplaySampler, batch_size: int, drop_last: bool = True) -> None:
        if batch_size > sampler.num_samples:
            raise ValueError(f"batch_size {batch_size} is larger than the {sampler.num_samples} samples available")
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[IndexBatch]:
        start = self.sampler.start()
        order = list(self.sampler)
        stop = len(order) - self.batch_size + 1 if self.drop_last else len(order)
        for offset in range(0, stop, self.batch_size):
            batch = IndexBatch(order[offset : offset + self.batch_size])
            batch.epoch, batch.end = self.sampler.epoch, start + offset + len(batch)
            yield batch

    def __len__(self) -> int:
        full, rest = divmod(self.sampler.num_samples, self.batch_size)
        return full + (0 if self.drop_last or not rest else 1)


class ReplayDataLoader(DataLoader):
    """A DataLoader over a :class:`ReplayBatchSampler` whose state Lightning checkpoints.

    Its state is the cursor of the last batch handed to a training step. Lightning fetches a batch
    ahead, so the loader cannot count what it yielded; its DataModule reports each consumed batch
    through :meth:`mark_consumed` instead (from ``on_after_batch_transfer``).
    """

    sampler: ReplayBatchSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # DataLoader's own signature (sampler=ReplayBatchSampler, batch_size=None), so Lightning can
        # rebuild the loader (it does for predict) without knowing this class.
        super().__init__(*args, **kwargs)
        self.consumed = self.sampler.sampler.cursor

    def mark_consumed(self, epoch: int, end: int) -> None:
        self.consumed = Cursor(epoch, end)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.consumed.epoch, "position": self.consumed.position}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.consumed = Cursor(**state_dict)
        self.sampler.sampler.cursor = self.consumed
        self.sampler.sampler.epoch = self.consumed.epoch


def replay_loader(
    dataset: Any, sampler: ReplaySampler, batch_size: int, drop_last: bool, num_workers: int, seed: int
) -> ReplayDataLoader:
    """A ReplayDataLoader handing ``dataset`` whole batches of indices (the dataset builds each batch)."""
    # A private generator: creating the iterator must not draw from the global RNG, or a resumed
    # run's dropout masks would differ from the uninterrupted run's.
    return ReplayDataLoader(
        dataset,
        sampler=ReplayBatchSampler(sampler, batch_size, drop_last),
        batch_size=None,
        collate_fn=_whole_batch,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )


def _whole_batch(batch: Any) -> Any:
    return batch


def mark_consumed(batch: dict[str, Any], trainer: Any, loader: ReplayDataLoader | None) -> None:
    """Record a training batch's cursor as consumed (call from ``on_after_batch_transfer``).

    That hook runs for the batch about to be trained on (after Lightning's prefetch), so the cursor
    saved in a checkpoint is exactly what was consumed.
    """
    cursor = batch.get("cursor")
    if cursor is not None and trainer is not None and trainer.training and loader is not None:
        loader.mark_consumed(*cursor)


def refuse_changed(state_dict: dict[str, Any], current: Any, what: str) -> None:
    """Raise DataManifestMismatch when a checkpoint's saved manifest is not ``current`` (a RecordManifest)."""
    if state_dict.get("manifest_digest") in (None, current.digest):
        return
    from lit_psion.datamodules.corpus import DataManifestMismatch

    changed = ", ".join(current.changed_keys(state_dict["manifest"]))
    raise DataManifestMismatch(
        f"refusing to load the checkpoint: the {what} data changed since it was written ({changed} differ); "
        "use the original settings or start a new run without --ckpt_path"
    )
