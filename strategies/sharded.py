"""``ShardedStrategy``: FSDP2 through Lightning's ``ModelParallelStrategy``, with verified sharded checkpoints.

Every rank holds a shard of each parameter, gradient and optimizer state (the model's
``configure_model`` applies ``fully_shard`` per block; see :mod:`lit_psion.nn.sharding`). It runs on
CPU with gloo as well as on CUDA with NCCL, unlike Lightning's ``fsdp`` strategy (FSDP1, GPU only).

A checkpoint is one ``step-NNNNNN/`` directory, written the way single-file checkpoints are, but by
every rank:

1. rank 0 names a staging directory; each rank writes its shard (``__<rank>_0.distcp``) through
   ``torch.distributed.checkpoint`` (which fsyncs it), rank 0 the DCP ``.metadata`` and
   ``trainer_state.pt`` (loops, schedulers, the data cursor, RNG: no tensors of the model);
2. each rank hashes the files it wrote and reports ``{name: sha256, bytes}`` to rank 0;
3. rank 0 writes ``manifest.json`` over every rank's files only once every rank has reported,
   fsyncs, and renames the directory into place; then every rank learns whether that worked.

Only then does :class:`~lit_psion.callbacks.PointerCheckpoint` move the pointer. Loading verifies
the whole manifest first (every shard, on every rank, as for single-file checkpoints; the shards are
hashed as a stream, not held). ``torch.distributed.checkpoint`` then gets each shard it asks for read
and hashed once more, so a shard changed after verification is refused, never loaded, a rank holds
at most one shard's bytes at a time, and DCP's pickled ``.metadata`` is only read once its digest
matched.
The checkpoint directory must be on a filesystem every rank sees (as DCP itself needs).
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from lightning.pytorch.strategies import ModelParallelStrategy, ParallelStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning_utilities.core.apply_func import apply_to_collection
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from typing_extensions import override

from lit_psion.checkpoint_io import (
    EXTRA_KEY,
    STATE,
    ManifestCheckpointIO,
    WeightsOnlyLoadPlanner,
    first_failure,
    lightning_state,
    load_trainer_state,
    verified_reader,
)
from lit_psion.core import atomic_write_json, sha256_file
from lit_psion.core.checkpoint import MANIFEST_FILE, CheckpointManifest, FileRecord, VerifiedCheckpoint
from lit_psion.core.errors import CheckpointError, CheckpointWriteError, ConfigError, OtherModelSettings
from lit_psion.core.files import fsync_path
from lit_psion.core.pointer import after_a_failed_write
from lit_psion.resumable import refuse_unloadable_state
from lit_psion.strategies.transactional import Transactional

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class ShardedStrategy(ModelParallelStrategy):
    """FSDP2 over every rank (data parallel only), checkpointed as verified shards.

    Args:
        param_dtype: ``bf16`` or ``fp16``: a mixed-precision policy (compute in that dtype, reduce
            gradients in float32); CUDA only. ``None`` trains in the parameters' dtype.
        reshard_after_forward: ``True`` (ZeRO-3): each block's parameters are gathered for its forward
            and again for its backward; ``False`` (ZeRO-2-like): gathered once per step and held from
            forward to backward (faster, more memory).
        process_group_backend: ``gloo`` on CPU, ``nccl`` on CUDA by default.
        timeout: How long a collective may wait for a peer.
    """

    strategy_name = "sharded"
    writes_on_every_rank = True
    """Every rank writes (and, with async writes, holds in flight) its part of each checkpoint."""

    def __init__(
        self,
        param_dtype: Literal["bf16", "fp16"] | None = None,
        reshard_after_forward: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = timedelta(minutes=30),
    ) -> None:
        if param_dtype is not None and param_dtype not in DTYPES:
            raise ConfigError(f"sharded strategy: param_dtype must be one of {sorted(DTYPES)} or null, got "
                              f"{param_dtype!r}")  # fmt: skip
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=True,
                         process_group_backend=process_group_backend, timeout=timeout)  # fmt: skip
        self.param_dtype = DTYPES.get(param_dtype) if param_dtype else None
        self.reshard_after_forward = reshard_after_forward
        self._writer: ThreadPoolExecutor | None = None
        self._writer_group: Any = None

    def sharding_options(self) -> dict[str, Any]:
        """What a model's ``configure_model`` passes to :func:`lit_psion.nn.sharding.shard_per_block`."""
        return {"param_dtype": self.param_dtype, "reshard_after_forward": self.reshard_after_forward}

    @override
    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every rank holds one shard
        super().setup_environment()
        if self.param_dtype is not None and self.root_device.type != "cuda":
            raise ConfigError("sharded strategy: param_dtype (a mixed-precision policy) needs CUDA; on CPU drop "
                              "--trainer.strategy.init_args.param_dtype")  # fmt: skip

    @override
    def setup(self, trainer: L.Trainer) -> None:
        if not is_overridden("configure_model", self.lightning_module):
            raise ConfigError(f"{type(self.lightning_module).__name__} has no sharding plan (configure_model); the "
                              "sharded strategy trains DecoderLM, MosaicLM and AdapterLM: use --trainer.strategy ddp")
        super().setup(trainer)
        if self._writes_async() and self._writer_group is None and dist.is_initialized():
            # The background writes' collectives (DCP's plan, the digest reports) get a group of their own,
            # so they never interleave with the training step's collectives on the default group.
            self._writer_group = dist.new_group(backend="gloo")

    def _writes_async(self) -> bool:
        return isinstance(self.checkpoint_io, ManifestCheckpointIO) and self.checkpoint_io.async_write

    @override
    def teardown(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        super().teardown()

    # ----------------------------------------------------------------------------------------- saving

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: str | os.PathLike, storage_options: Any = None
    ) -> None:
        refuse_unloadable_state(checkpoint)
        final, staging = stage_checkpoint(self, filepath)
        shards = {"state_dict": checkpoint.pop("state_dict")}
        shards.update({f"optimizer_{i}": state for i, state in enumerate(checkpoint.pop("optimizer_states", []))})
        if not self._writes_async():
            self._write(shards, checkpoint, staging, final, None)
            return
        # A point-in-time copy (each rank its own shards: no collective), written while training goes on.
        # Always a copy: a tensor already on the CPU (AdamW's step count, CPU-offloaded shards) is updated in place.
        shards, checkpoint = apply_to_collection((shards, checkpoint), torch.Tensor,
                                                 lambda t: t.detach().to("cpu", copy=True))  # fmt: skip
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lit_psion-shards")
        future = self._writer.submit(self._write, shards, checkpoint, staging, final, self._writer_group)
        self.checkpoint_io.hold_pending(future)

    def _write(self, shards: dict[str, Any], checkpoint: dict[str, Any], staging: Path, final: Path,
               group: Any) -> None:  # fmt: skip
        problem: str | None = None
        try:
            writer = dcp.FileSystemWriter(staging, single_file_per_rank=True, sync_files=True)
            dcp.save(shards, storage_writer=writer, process_group=group)
        except (Exception, dcp.api.CheckpointException) as error:  # any failure (DCP's is a BaseException) on any
            # rank is reported to every rank by the seal: never a hang
            problem = _reason(error)
        seal_checkpoint(self, checkpoint, staging, final, f"__{self.global_rank}_*.distcp", problem, STATE, group)

    # ---------------------------------------------------------------------------------------- loading

    @override
    def load_checkpoint(self, checkpoint_path: str | os.PathLike, weights_only: bool | None = None) -> dict[str, Any]:
        io_plugin = self.checkpoint_io
        if not isinstance(io_plugin, ManifestCheckpointIO):
            raise CheckpointError("the sharded strategy loads lit_psion checkpoints only (ManifestCheckpointIO)")
        verified = io_plugin.take_verified(checkpoint_path)
        if not verified.sharded:
            raise CheckpointError(f"checkpoint {str(verified.path)!r} is a single-file checkpoint; the sharded "
                                  "strategy resumes sharded checkpoints only: resume it with the strategy that wrote "
                                  "it, or start a new run from its weights")  # fmt: skip
        self._load_shards(verified, dict(enumerate(self.optimizers)))
        return lightning_state(load_trainer_state(verified), verified)

    def _load_shards(self, verified: VerifiedCheckpoint, optimizers: dict[int, torch.optim.Optimizer]) -> None:
        """This rank's shards of the model and of ``optimizers`` (by index) from a verified sharded checkpoint."""
        model_state = {"state_dict": get_model_state_dict(self.model)}
        try:
            dcp.load(model_state, storage_reader=verified_reader(verified), planner=WeightsOnlyLoadPlanner())
            self.model.load_state_dict(model_state["state_dict"], strict=self.lightning_module.strict_loading)
            for index, optimizer in optimizers.items():
                key = f"optimizer_{index}"
                state = {key: get_optimizer_state_dict(self.model, optimizer)}
                dcp.load(state, storage_reader=verified_reader(verified), planner=WeightsOnlyLoadPlanner())
                set_optimizer_state_dict(self.model, optimizer, optim_state_dict=state[key],
                                         options=StateDictOptions(cpu_offload=True))  # fmt: skip
        except (dcp.api.CheckpointException, RuntimeError, KeyError, ValueError) as error:
            if isinstance(cause := first_failure(error), CheckpointError):
                raise cause from error
            raise OtherModelSettings(f"checkpoint {str(verified.path)!r} does not fit this model's shards "
                                     f"({_reason(error)}): this config's model settings are not the run's (resume "
                                     "with its own), or its shard files do not hold what its .metadata describes "
                                     "(swapped, cut short or altered under a re-hashed manifest: use an intact copy)"
                                     ) from error  # fmt: skip


def _record(path: Path) -> FileRecord:
    return FileRecord(sha256=sha256_file(path), bytes=path.stat().st_size)


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def stage_checkpoint(strategy: ParallelStrategy, filepath: str | os.PathLike) -> tuple[Path, Path]:
    """Rank 0's checkpoint path and a fresh staging directory beside it, known to every rank."""
    final = Path(strategy.broadcast(str(filepath)))
    staging = final.with_name(f".{final.name}.tmp-{strategy.broadcast(os.getpid())}")
    problem = None
    if strategy.is_global_zero:
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        except OSError as error:  # every rank learns it (none may wait in a collective rank 0 never enters)
            problem = _reason(error)
    if (problem := strategy.broadcast(problem)) is not None:
        raise CheckpointWriteError(f"writing sharded checkpoint {str(final)!r} failed: {problem}; "
                                   + after_a_failed_write(final, "fix the directory"))
    return final, staging


def seal_checkpoint(
    strategy: ParallelStrategy,
    checkpoint: dict[str, Any],
    staging: Path,
    final: Path,
    mine: str,
    problem: str | None,
    state_file: str | None,
    group: Any = None,
) -> None:
    """Every rank: report the digests of the staged files it wrote (those matching the glob ``mine``), or its
    write's failure; rank 0 then writes ``state_file`` (the rest of ``checkpoint``, if named), hashes what
    no rank claimed, writes the manifest over all of it, fsyncs and renames the directory into place.

    ``group``: the process group of the reports (a background writer's own; default: the world).

    Raises:
        CheckpointWriteError: on every rank, if any rank's write or the seal failed; the staging directory
            is removed and the previous checkpoint stays the pointed-to one.
    """
    records: dict[str, FileRecord] = {}
    if problem is None:
        try:
            records = {_name(path, staging): _record(path) for path in staging.rglob(mine) if path.is_file()}
        except OSError as error:
            problem = _reason(error)
    reports: list[Any] = [None] * strategy.world_size
    dist.all_gather_object(reports, (problem, records), group=group)
    if strategy.is_global_zero:
        problem = next((reported for reported, _ in reports if reported), None)
        if problem is None:
            claimed = {name: record for _, files in reports for name, record in files.items()}
            try:
                problem = _seal(checkpoint, staging, final, claimed, state_file)
            except Exception as error:  # torch.save reports a full disk as RuntimeError: still a verdict for all
                problem = _reason(error.__context__ if isinstance(error.__context__, OSError) else error)
        if problem is not None:
            shutil.rmtree(staging, ignore_errors=True)
    verdict = [problem]
    dist.broadcast_object_list(verdict, src=0, group=group)
    if (problem := verdict[0]) is not None:
        raise CheckpointWriteError(f"writing sharded checkpoint {str(final)!r} failed: {problem}; "
                                   + after_a_failed_write(final, "free space or fix the disk"))


def _name(path: Path, staging: Path) -> str:
    return path.relative_to(staging).as_posix()


def _seal(checkpoint: dict[str, Any], staging: Path, final: Path, claimed: dict[str, FileRecord],
          state_file: str | None) -> str | None:  # fmt: skip
    """Rank 0: the trainer state, the manifest over every rank's files and its own, then the rename into place."""
    try:
        if state_file is not None:
            with open(staging / state_file, "wb") as handle:
                torch.save({k: v for k, v in checkpoint.items() if k != "state_dict"}, handle)
            fsync_path(staging / state_file)
        files = dict(claimed)
        for path in sorted(staging.rglob("*")):
            if path.is_file() and (name := _name(path, staging)) not in files and name != MANIFEST_FILE:
                files[name] = _record(path)  # DCP's .metadata, the trainer state: rank 0's own
        extra = checkpoint.get(EXTRA_KEY, {})
        manifest = CheckpointManifest(step=checkpoint["global_step"], files=dict(sorted(files.items())), **extra)
        atomic_write_json(staging / MANIFEST_FILE, manifest.to_json_dict())
        for directory in sorted({path.parent for path in staging.rglob("*") if path.is_file()}, reverse=True):
            fsync_path(directory)
        if final.is_symlink():
            final.unlink()
        elif final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        fsync_path(final.parent)
    except OSError as error:
        return _reason(error)
    return None


class TransactionalShardedStrategy(Transactional, ShardedStrategy):
    """Transactional steps under FSDP2 (registry name ``transactional_sharded``).

    Every rank snapshots and restores its own shards of the parameters and optimizer state; the
    gradient norm is the whole model's (the shards' norms reduced), and losses and reasons are agreed
    over ranks as under DDP. After each step the blocks FSDP2 keeps gathered after a forward are
    resharded, so callbacks see the sharded parameters and the next forward gathers restored shards. Restoring after
    ``restore_after`` rollbacks loads the run's last durable sharded checkpoint.

    Args:
        policy: When to roll back and what repeated rollbacks lead to (default: :class:`TransactionPolicy`'s).
        kwargs: :class:`ShardedStrategy`'s arguments (``reshard_after_forward``, ``process_group_backend``, ...).
    """

    strategy_name = "transactional_sharded"

    @override
    def _step_params(self, module: L.LightningModule, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        # The sharded parameters the optimizer updates: the module may hold gathered copies in their place.
        return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]

    @override
    def _weights_version(self, module: L.LightningModule) -> tuple:
        sharded = [p for optimizer in self.optimizers for group in optimizer.param_groups for p in group["params"]]
        # Each shard's own tensor (to_local() makes a new view per call under autograd, with a new id every time).
        tensors = [t._local_tensor if isinstance(t, DTensor) else t for t in (*sharded, *module.buffers())]
        return tuple((id(t), t.data_ptr(), t.shape, t.dtype, t._version) for t in tensors)

    @override
    def _remeasured(self, module: L.LightningModule, n_buffered: int) -> list[torch.Tensor] | None:
        # Every forward gathers shards from every rank: all ranks measure again, or none does.
        losses = super()._remeasured(module, n_buffered)
        if not self.reduce_boolean_decision(losses is not None, all=True):
            return None
        return losses

    @override
    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Any, model: Any = None, **kwargs: Any) -> Any:
        try:
            return super().optimizer_step(optimizer, closure, model, **kwargs)
        finally:
            # The losses' forwards run without gradients, so the blocks FSDP2 keeps gathered after a forward stay
            # gathered, holding the weights as measured (a rollback's included) where the sharded ones belong.
            for fsdp_module in self.model.modules():
                if isinstance(fsdp_module, FSDPModule):
                    fsdp_module.reshard()

    @override
    def _restore_weights(self, verified: VerifiedCheckpoint, optimizer: torch.optim.Optimizer) -> None:
        if not verified.sharded:
            raise CheckpointError(f"checkpoint {str(verified.path)!r} is a single-file checkpoint; a sharded run "
                                  "restores sharded checkpoints only")  # fmt: skip
        self._load_shards(verified, {self.optimizers.index(optimizer): optimizer})
