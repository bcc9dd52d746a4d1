"""FSDP2 sharding plans: one ``fully_shard`` unit per transformer block, then the root.

Each block's parameters are gathered just before its forward and freed after it, so a rank holds
its shard of every parameter plus one block's full parameters at a time. The root unit takes what
is left (embeddings, the tied head, the final norm). Frozen parameters (an adapter's base) are
sharded like the rest; only the trainable ones get gradients and optimizer state.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from lit_psion.nn.gloo_comms import use_gloo_comms


def shard_per_block(
    root: nn.Module,
    blocks: Iterable[nn.Module],
    mesh: DeviceMesh,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
) -> None:
    """Apply ``fully_shard`` to each of ``blocks`` and then to ``root``, in place, over ``mesh``'s data-parallel ranks.

    Args:
        root: The module that holds the blocks.
        blocks: Its repeated units (sharded one by one, so their all-gathers overlap compute).
        mesh: A device mesh with a ``data_parallel`` dimension (Lightning's ModelParallelStrategy makes one).
        param_dtype: Compute in this dtype with gradients reduced in float32 (a CUDA mixed-precision
            policy); ``None`` keeps the parameters' dtype.
        reshard_after_forward: Free each block's gathered parameters after its forward and gather them
            again for its backward (ZeRO-3: least memory); ``False`` keeps them until the backward
            (ZeRO-2-like: one all-gather per block per step, the full parameters held meanwhile).
    """
    data_parallel = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    kwargs = {"mesh": data_parallel, **({"mp_policy": policy} if policy is not None else {})}
    blocks = list(blocks)
    for index, block in enumerate(blocks):
        # The last block's backward starts right after its forward: resharding it would only re-gather it.
        fully_shard(block, reshard_after_forward=reshard_after_forward and index < len(blocks) - 1, **kwargs)
    fully_shard(root, reshard_after_forward=False, **kwargs)  # the root's parameters are used again first
    use_gloo_comms(root, blocks, data_parallel)
