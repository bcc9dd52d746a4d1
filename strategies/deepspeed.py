"""``VerifiedDeepSpeedStrategy``: Lightning's DeepSpeed (ZeRO-2/3, CUDA only) with lit_psion's checkpoint manifest.

DeepSpeed writes its own checkpoint directory (``checkpoint/`` with each rank's
``*zero_pp_rank_<r>_*`` partitions, the model states, ``latest``). This strategy has the engine
write it into a staging directory, then seals it the way the sharded strategy seals DCP shards
(:func:`lit_psion.strategies.sharded.seal_checkpoint`): each rank reports the digests of its own
partitions, rank 0 hashes the rest, writes ``manifest.json`` over every file and renames the
directory into place; only then does the pointer move. Loading verifies the whole manifest on every
rank first; DeepSpeed then reads the files itself (they are re-read from disk, not handed over from
the verified bytes as the sharded strategy's are).

Needs the ``deepspeed`` extra and CUDA; ``python -m lit_psion`` refuses it on CPU (exit 2) and names
``configs/overlays/fsdp.yaml`` instead.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy
from typing_extensions import override

from lit_psion.checkpoint_io import ManifestCheckpointIO
from lit_psion.core.errors import CheckpointError
from lit_psion.strategies.sharded import seal_checkpoint, stage_checkpoint


class VerifiedDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` (same arguments) whose checkpoints are staged, digested by their writers and sealed."""

    @override
    def save_checkpoint(self, checkpoint: dict, filepath: str | os.PathLike, storage_options: Any = None) -> None:
        final, staging = stage_checkpoint(self, filepath)
        problem: str | None = None
        try:
            super().save_checkpoint(checkpoint, staging, storage_options)
        except Exception as error:  # reported to every rank by the seal: no rank waits for one that failed
            problem = (error.strerror if isinstance(error, OSError) else None) or str(error) or type(error).__name__
        self.barrier("lit_psion.deepspeed_written")  # the model states rank 0 hashes are complete
        seal_checkpoint(self, checkpoint, staging, final, f"*zero_pp_rank_{self.global_rank}_*", problem, None)

    @override
    def load_checkpoint(self, checkpoint_path: str | os.PathLike, weights_only: bool | None = None) -> dict[str, Any]:
        io_plugin = self.checkpoint_io
        verified = io_plugin.take_verified(checkpoint_path) if isinstance(io_plugin, ManifestCheckpointIO) else None
        state = super().load_checkpoint(checkpoint_path, weights_only)
        if verified is not None and state.get("global_step", verified.step) != verified.step:
            raise CheckpointError(f"checkpoint {str(verified.path)!r}: its trainer state is at step "
                                  f"{state['global_step']}, its manifest says {verified.step}")  # fmt: skip
        return state
