"""FSDP2 on gloo (CPU): faster collectives, reused buffers and one-block-ahead gathers.

FSDP2's defaults are built for GPUs. On gloo, measured with 2 ranks and 10 MiB shards on this
project's 2-core machine:

- gloo's ``all_gather_into_tensor`` takes ~14 ms where one broadcast from each rank takes ~5 ms;
- its ``reduce_scatter_tensor`` takes ~23 ms where sending each peer its chunk and summing what
  comes back takes ~7 ms;
- without streams every gather starts when its block is needed and waits there for the slower rank;
- a gathered block over 32 MiB is a fresh ``mmap`` every time (page faults and zeroing, twice a step).

So here the all-gather is a broadcast per rank (asynchronous when FSDP2 prefetches), the
reduce-scatter a direct exchange summed in rank order, the big communication buffers are kept and
handed out again once nothing uses them, and each block's gather is issued one block ahead. The
values are gloo's own: the gathered bytes are the same, and at world 2 each reduced chunk is the same
bits as gloo's reduce-scatter (two addends; at larger worlds the rank order can differ from gloo's in
the last bit). ``tests/nn/test_gloo_comms.py`` checks both, and that a model trains bitwise the same.

Installed through FSDP2's hooks (``FSDPModule.set_custom_all_gather``, ``set_custom_reduce_scatter``,
the prefetch lists) only on a CPU mesh over gloo; NCCL keeps its own kernels and streams.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather, ReduceScatter


class _AllOf(dist.Work):
    """One handle for several collectives in flight: waiting on it waits on each."""

    def __init__(self, works: list[dist.Work]) -> None:
        super().__init__()
        self.works = works

    def wait(self, timeout: object = None) -> bool:
        for work in self.works:
            work.wait()
        return True


class _ReusedBuffers:
    """Buffers kept and handed out again once nothing but this pool refers to their memory.

    A block's gathered parameters (tens of MB) are needed twice a step per block and freed in between; fresh
    buffers of that size come from ``mmap`` every time (glibc maps blocks over 32 MiB), and each one costs page
    faults and zeroing. The pool holds as many buffers as are in use at once (the block being computed and the
    one being prefetched). A buffer is free when its storage's use count is back to the pool's own reference.
    """

    def __init__(self) -> None:
        self._pool: list[tuple[torch.UntypedStorage, torch.dtype]] = []

    def allocate(self, size: Sequence[int | torch.SymInt], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        size = torch.Size(int(n) for n in size)
        nbytes = size.numel() * dtype.itemsize
        for storage, kind in self._pool:
            if (storage.nbytes(), kind, storage.device) == (nbytes, dtype, device) and _unused(storage):
                return torch.empty(0, dtype=dtype, device=device).set_(storage, 0, size)  # a use until dropped
        buffer = torch.empty(size, dtype=dtype, device=device)
        self._pool.append((buffer.untyped_storage(), dtype))
        return buffer


def _unused(storage: torch.UntypedStorage) -> bool:
    """Only the pool refers to ``storage``: no tensor or view of it is alive."""
    return torch._C._storage_Use_Count(storage._cdata) == 1


class BroadcastAllGather(_ReusedBuffers, AllGather):
    """All-gather as one broadcast from each rank into its slot of the output, all in flight at once.

    With ``async_op`` (a prefetch) it returns a handle while gloo's threads move the bytes, so the gather of the
    next block runs under this block's compute.
    """

    def __call__(
        self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup, async_op: bool = False
    ) -> dist.Work | None:
        world, rank, numel = group.size(), group.rank(), input_tensor.numel()
        slots = output_tensor.view(world, numel)
        if slots[rank].data_ptr() != input_tensor.data_ptr():  # FSDP2 copies the shard into its slot already
            slots[rank].copy_(input_tensor.view(-1))
        works = [dist.broadcast(slots[src], src=dist.get_global_rank(group, src), group=group, async_op=True)
                 for src in range(world)]  # fmt: skip
        handle = _AllOf(works)
        if async_op:
            return handle
        handle.wait()
        return None


class ExchangeReduceScatter(_ReusedBuffers, ReduceScatter):
    """Reduce-scatter as a direct exchange: every rank sends each peer that peer's chunk and sums the chunks it gets.

    Supports the reductions FSDP2 asks for on float gradients: ``SUM`` and ``AVG`` (anything else is refused, so a
    future torch that asks for another one fails loudly instead of reducing wrongly). Only the flat gradient buffers
    FSDP2 copies a block's gradients into are reused (told apart by their size: one this reduce-scatter has reduced
    from); the reduced shards it allocates here are the gradients themselves, alive until ``zero_grad``, and are left
    to the allocator. Should a shard's size equal another group's flat buffer, that shard is pooled: still correct
    (its gradient's views count as uses), only held after ``zero_grad``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._input_nbytes: set[int] = set()

    def allocate(self, size: Sequence[int | torch.SymInt], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if math.prod(int(n) for n in size) * dtype.itemsize in self._input_nbytes:
            return super().allocate(size, dtype=dtype, device=device)
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(
        self,
        output_tensor: torch.Tensor,
        input_tensor: torch.Tensor,
        group: dist.ProcessGroup,
        op: dist.ReduceOp | dist.ReduceOp.RedOpType,
        async_op: bool = False,
    ) -> None:
        if op not in (dist.ReduceOp.SUM, dist.ReduceOp.AVG):
            raise NotImplementedError(f"ExchangeReduceScatter reduces with SUM or AVG, not {op}")
        self._input_nbytes.add(input_tensor.nbytes)
        world, rank, numel = group.size(), group.rank(), output_tensor.numel()
        chunks = input_tensor.view(world, numel)
        received = super().allocate((world - 1, numel), dtype=input_tensor.dtype, device=input_tensor.device)
        sources = [chunks[rank] if peer == rank else received[peer - (peer > rank)] for peer in range(world)]
        ops = []
        for peer in range(world):
            if peer != rank:
                global_peer = dist.get_global_rank(group, peer)
                ops.append(dist.P2POp(dist.isend, chunks[peer], global_peer, group))
                ops.append(dist.P2POp(dist.irecv, sources[peer], global_peer, group))
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        torch.add(sources[0], sources[1], out=output_tensor)  # in rank order: the same bits on every run
        for source in sources[2:]:
            output_tensor.add_(source)
        if op == dist.ReduceOp.AVG:
            output_tensor.div_(world)


def use_gloo_comms(root: FSDPModule, blocks: Sequence[FSDPModule], mesh: DeviceMesh) -> None:
    """On a CPU mesh over gloo, give a sharded model the collectives above and gather each block one block ahead.

    ``root`` and each of ``blocks`` must already be ``fully_shard``-ed. Without streams (CPU), FSDP2 gathers a
    block only when its forward or backward starts, so every gather waits for the slower rank there; issued one
    block early and asynchronously (``unshard_async_op``), a gather has a block's compute to arrive in. The cost is
    one more block's full parameters held at a time. Anything else (NCCL; gloo over CUDA tensors, where FSDP2's
    streams would race the pool) is left as it is.

    The prefetch lists assume every forward runs every block in order, as the decoders here do: a forward that
    skipped a block would leave that block's early gather pending, to be used by its next forward even if the
    shards changed in place in between.
    """
    group = mesh.get_group()
    if mesh.device_type != "cpu" or dist.get_backend(group) != "gloo" or group.size() == 1:
        return
    all_gather, reduce_scatter = BroadcastAllGather(), ExchangeReduceScatter()  # one pool each for the whole model
    for module in (*blocks, root):
        module.set_custom_all_gather(all_gather)
        module.set_custom_reduce_scatter(reduce_scatter)
    if not hasattr(root, "_set_unshard_async_op"):  # FSDP2's own switch, private in torch 2.13: without it a
        return  # prefetch would gather synchronously, one block early for nothing
    root._set_unshard_async_op(True)  # every FSDP module under root
    root.set_modules_to_forward_prefetch(list(blocks[:1]))
    for before, after in itertools.pairwise(blocks):
        before.set_modules_to_forward_prefetch([after])
        after.set_modules_to_backward_prefetch([before])
