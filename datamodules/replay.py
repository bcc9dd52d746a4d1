"""Deterministic, resumable sample order shared by lit_psion's DataModules.

The order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone, so any process can
recompute it. A :class:`Cursor` ``(epoch, position)`` says how many samples of that order were
consumed; a loader built from a cursor continues exactly there without reading consumed data again.
The cursor travels as one type: on each :class:`IndexBatch`, stamped on its batch as the plain tuple
``batch["cursor"]`` by :class:`CursorStamped`, and saved as ``{"epoch": e, "position": p}`` by
:meth:`ReplayDataLoader.state_dict`.

Under data parallelism the order is cut into global batches (what one optimizer step consumes across
all ranks) exactly as in a single process, and each rank takes its contiguous slice of each
(:class:`ReplayBatchSampler`). The cursor stays global: every rank's batch carries the cursor after the
whole global batch, so a loader state written at one world size resumes at any other on the next global
batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler


@dataclasses.dataclass(frozen=True, slots=True)
class Cursor:
    """A place in the replay order: ``position`` samples of epoch ``epoch``'s permutation are consumed."""

    epoch: int = 0
    """The epoch whose permutation is being consumed."""
    position: int = 0
    """How many samples of that permutation were consumed."""

    def as_tuple(self) -> tuple[int, int]:
        """``(epoch, position)``: what a batch carries as ``batch["cursor"]`` (and receipts digest)."""
        return (self.epoch, self.position)

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "position": p}``: what a checkpoint carries."""
        return {"epoch": self.epoch, "position": self.position}


@dataclasses.dataclass(frozen=True, slots=True)
class IndexBatch:
    """One rank's sample indices of a global batch, the global cursor after it, and the whole global batch."""

    indices: list[int]
    """This rank's slice of the global batch (all of it in a single process)."""
    cursor: Cursor
    """Where in the order the global batch ends: the same on every rank."""
    global_indices: list[int]
    """The whole global batch: every rank's slice, concatenated in rank order."""


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The permutation of ``range(num_samples)`` epoch ``epoch`` consumes (identity when not shuffled)."""
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
        yield from self.order().tolist()

    def order(self) -> torch.Tensor:
        """The indices this epoch still has to give, in order (what iterating yields)."""
        return epoch_order(self.num_samples, self.seed, self.epoch, self.shuffle)[self.start() :]

    def __len__(self) -> int:
        return self.num_samples


class ReplayBatchSampler(DistributedSampler):
    """Rank ``rank``'s slice of each full batch of a :class:`ReplaySampler`, as an :class:`IndexBatch`.

    The global batches (``batch_size`` consecutive samples of the order) do not depend on the world
    size. Rank ``r`` of ``world_size`` takes the contiguous slice ``[r * s, (r + 1) * s)`` of each, with
    ``s = batch_size // world_size``, so the slices concatenated in rank order are the global batch and a
    run at any world size consumes the same global batches, step for step. Every rank's IndexBatch carries
    the same, global cursor. A batch size the world size does not divide is refused (uneven slices would
    need a sample-weighted loss: DDP averages the ranks' gradients with equal weight).

    Used as the DataLoader's ``sampler`` with ``batch_size=None``, so Lightning sees (and calls
    ``set_epoch`` on) this object, and never rebuilds it as it would a ``batch_sampler``. It is a
    ``DistributedSampler`` because it already gives each rank its share: Lightning then leaves it alone under
    DDP even with ``use_distributed_sampler=True``, instead of wrapping it in a ``DistributedSamplerWrapper``
    that would re-deal its items by stride.

    Raises:
        ValueError: ``batch_size`` exceeds the samples, ``rank`` is not in the world, the world size does not
            divide ``batch_size``, or a partial last batch (``drop_last=False``) would be sliced.
    """

    def __init__(
        self, sampler: ReplaySampler, batch_size: int, drop_last: bool = True, *, rank: int = 0, world_size: int = 1
    ) -> None:
        # Not DistributedSampler.__init__: that one deals a dataset's indices by stride; this slices global batches.
        if batch_size > sampler.num_samples:
            raise ValueError(f"batch_size {batch_size} is larger than the {sampler.num_samples} samples available")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if batch_size % world_size or (world_size > 1 and not drop_last):
            raise ValueError(f"cannot slice batches of {batch_size} (drop_last={drop_last}) over {world_size} ranks")
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.rank, self.num_replicas = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[IndexBatch]:
        start = self.sampler.start()
        order = self.sampler.order()
        stop = len(order) - self.batch_size + 1 if self.drop_last else len(order)
        share = self.batch_size // self.num_replicas
        for offset in range(0, stop, self.batch_size):
            whole = order[offset : offset + self.batch_size].tolist()  # (not the whole order at once: 0.1 s an epoch)
            cursor = Cursor(self.sampler.epoch, start + offset + len(whole))
            yield IndexBatch(whole[self.rank * share : (self.rank + 1) * share], cursor, whole)

    def __len__(self) -> int:
        full, rest = divmod(self.sampler.num_samples, self.batch_size)
        return full + (0 if self.drop_last or not rest else 1)


class CursorStamped(Dataset):
    """A dataset of whole batches whose every batch carries its cursor: the one place a cursor is stamped.

    The wrapped dataset builds the batch dict for a list of sample indices (this rank's slice); this adds
    ``batch["cursor"] = (epoch, position)``, the global cursor after the batch, and
    ``batch["global_sample_ids"]``, the sample ids of the whole global batch (``batch["sample_ids"]`` in a
    single process), so every rank can name what the step consumed across all ranks.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index_batch: IndexBatch) -> dict[str, Any]:
        batch = self.dataset[index_batch.indices]
        batch["cursor"] = index_batch.cursor.as_tuple()
        batch["global_sample_ids"] = torch.tensor(index_batch.global_indices, dtype=torch.long)
        return batch


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

    def mark_consumed(self, cursor: Cursor) -> None:
        self.consumed = cursor

    def state_dict(self) -> dict[str, int]:
        return self.consumed.state_dict()

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.consumed = Cursor(**state_dict)
        self.sampler.sampler.cursor = self.consumed
        self.sampler.sampler.epoch = self.consumed.epoch


def replay_loader(
    dataset: Dataset,
    sampler: ReplaySampler,
    batch_size: int,
    drop_last: bool,
    num_workers: int,
    seed: int,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> ReplayDataLoader:
    """A ReplayDataLoader handing ``dataset`` rank ``rank``'s slice of each global batch of ``batch_size`` indices.

    The dataset builds each batch; it comes back with the global ``cursor`` and ``global_sample_ids``
    stamped (:class:`CursorStamped`).
    """
    # A private generator: creating the iterator must not draw from the global RNG, or a resumed
    # run's dropout masks would differ from the uninterrupted run's.
    return ReplayDataLoader(
        CursorStamped(dataset),
        sampler=ReplayBatchSampler(sampler, batch_size, drop_last, rank=rank, world_size=world_size),
        batch_size=None,
        collate_fn=_whole_batch,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )


def _whole_batch(batch: Any) -> Any:
    return batch
