"""Custom Lightning strategies (imported as ``lit_psion.strategies``).

Importing this package registers them in Lightning's ``StrategyRegistry``, one line each (the
registry refuses a name twice), so ``--trainer.strategy transactional`` selects one by name with
its default policy. It also has every process that runs them destroy its process group at exit.
"""

import atexit
import contextlib

import torch.distributed as dist
from lightning.pytorch.strategies import StrategyRegistry

from lit_psion.core.skip_list import SkipList, SkippedBatch
from lit_psion.strategies.deepspeed import VerifiedDeepSpeedStrategy
from lit_psion.strategies.elastic import ElasticMeshStrategy, TransactionalElasticMeshStrategy
from lit_psion.strategies.sharded import ShardedStrategy, TransactionalShardedStrategy
from lit_psion.strategies.transactional import (
    Transactional,
    TransactionalDDPStrategy,
    TransactionalStrategy,
    TransactionPolicy,
)

StrategyRegistry.register("transactional", TransactionalStrategy, description="transactional steps, one device")
StrategyRegistry.register("transactional_ddp", TransactionalDDPStrategy, description="transactional steps under DDP")
StrategyRegistry.register("sharded", ShardedStrategy, description="FSDP2 with verified sharded checkpoints")
StrategyRegistry.register("transactional_sharded", TransactionalShardedStrategy,
                          description="transactional steps under FSDP2")
StrategyRegistry.register("elastic_mesh", ElasticMeshStrategy, description="DDP with receipted membership epochs")
StrategyRegistry.register("transactional_elastic_mesh", TransactionalElasticMeshStrategy,
                          description="transactional steps on an elastic mesh")


def _destroy_process_group() -> None:
    """At exit, while the interpreter is still whole, destroy the process group. Lightning does so for NCCL only; a
    gloo group left to the interpreter's teardown kills a rank that had finished (``terminate called without an
    active exception``, SIGABRT) now and then, so torchrun reports a completed fit as failed."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # a peer already gone: nothing is left to close cleanly
            dist.destroy_process_group()


atexit.register(_destroy_process_group)

__all__ = [
    "ElasticMeshStrategy",
    "ShardedStrategy",
    "SkipList",
    "SkippedBatch",
    "TransactionPolicy",
    "Transactional",
    "TransactionalDDPStrategy",
    "TransactionalElasticMeshStrategy",
    "TransactionalShardedStrategy",
    "TransactionalStrategy",
    "VerifiedDeepSpeedStrategy",
]
