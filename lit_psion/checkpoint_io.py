"""Writing and loading checkpoint directories: Lightning's ``CheckpointIO`` over core's manifest truth.

``checkpoints/step-NNNNNN/`` holds ``model.safetensors`` (the weights), ``trainer_state.pt`` (optimizer,
schedulers, loops, data cursor, RNG: tensors and plain data, loadable with ``weights_only=True``, which
:func:`~lit_psion.resumable.refuse_unloadable_state` checks first) and ``manifest.json`` (every file's sha256
and size, plus the step, run, model signature, data manifest digest, parent checkpoint and writer). The directory
is built under a temporary name, every file and the directory are fsynced, and only then is it renamed into place.
Loading refuses any difference from the manifest: a changed byte, a truncated, missing or extra file, or a symlink.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import shutil
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.distributed.checkpoint as dcp
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from safetensors.torch import save_file
from typing_extensions import override

from lit_psion.core import sha256_file
from lit_psion.core.checkpoint import (
    MANIFEST_FILE,
    CheckpointManifest,
    FileRecord,
    VerifiedCheckpoint,
    verify_checkpoint,
)
from lit_psion.core.errors import CheckpointError, CheckpointWriteError, load_refusal
from lit_psion.core.files import FILE_MODE, fsync_path
from lit_psion.core.pointer import after_a_failed_write
from lit_psion.resumable import refuse_unloadable_state

WEIGHTS, STATE, MANIFEST = "model.safetensors", "trainer_state.pt", MANIFEST_FILE
EXTRA_KEY = "lit_psion"
"""Key of the checkpoint dict where PointerCheckpoint puts the manifest's run-level fields."""


class ManifestCheckpointIO(CheckpointIO):
    """Lightning ``CheckpointIO`` for verified checkpoint directories (pass it in ``trainer.plugins``).

    With ``async_write`` set, :meth:`save_checkpoint` copies the tensors on the caller's thread and
    writes in a background thread; the write's future is then collected with :meth:`take_pending`.
    """

    def __init__(self, verified: VerifiedCheckpoint | None = None, resumes: bool = False) -> None:
        self.async_write = False
        self.resumes = resumes
        """A fit resumes from what this loads: the optimizer and schedule states must be there too."""
        self._verified = verified
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        refuse_unloadable_state(checkpoint)
        if not self.async_write:
            write_checkpoint(checkpoint, path)
            return
        if self._pending is not None:
            raise RuntimeError("a checkpoint write is already in flight; collect it with take_pending() first")
        # A point-in-time copy: training goes on mutating the parameters and optimizer state in place.
        snapshot = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().to("cpu", copy=True))
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lit_psion-checkpoint")
        self._pending = self._executor.submit(write_checkpoint, snapshot, path)

    def hold_pending(self, pending: Future) -> None:
        """Hold a write a strategy started itself (the sharded strategy's), to be collected like this IO's own."""
        if self._pending is not None:
            raise RuntimeError("a checkpoint write is already in flight; collect it with take_pending() first")
        self._pending = pending

    def take_pending(self) -> Future | None:
        """The in-flight write started by the last async :meth:`save_checkpoint` (None if there is none)."""
        pending, self._pending = self._pending, None
        return pending

    @override
    def teardown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @override
    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        verified = self.take_verified(path)
        return lightning_state(load_verified(verified, map_location), verified, resumes=self.resumes)

    def take_verified(self, path: str | os.PathLike) -> VerifiedCheckpoint:
        """``path`` verified: the checkpoint the CLI already verified if it is that one, else verified now."""
        verified, self._verified = self._verified, None
        if verified is None or Path(path).resolve() != verified.path.resolve():
            verified = verify_checkpoint(path)
        return verified

    @override
    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        shutil.rmtree(path, ignore_errors=True)


def write_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``checkpoint`` to the directory ``path``: staged, fsynced, renamed into place.

    Raises:
        CheckpointWriteError: the write failed (disk full, I/O error); nothing is left at ``path``'s
            staging name and an existing ``path`` is untouched.
    """
    final = Path(path)
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        # Helper threads hash each file from the page cache, just after it is written: the weights while the
        # trainer state is serialized, the trainer state while its own fsync runs (hashing and fsync release
        # the GIL). The digests are of the bytes the files hold, and cost little beyond the writes.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="lit_psion-digest") as digester:
            save_file(_own_storage(checkpoint["state_dict"]), staging / WEIGHTS)
            os.chmod(staging / WEIGHTS, FILE_MODE)  # safetensors creates it 0600; the run's other files follow umask
            _check_complete(staging / WEIGHTS)
            weights = digester.submit(_digest_and_sync, staging / WEIGHTS)
            with _open_for_state(staging / STATE) as handle:
                torch.save({k: v for k, v in checkpoint.items() if k != "state_dict"}, handle)
            state = digester.submit(_digest, staging / STATE)
            fsync_path(staging / STATE)
            files = {WEIGHTS: weights.result(), STATE: state.result()}
        manifest = CheckpointManifest(step=checkpoint["global_step"], files=files, **checkpoint.get(EXTRA_KEY, {}))
        record = json.dumps(manifest.to_json_dict(), indent=2, sort_keys=True) + "\n"  # as atomic_write_json writes
        _write_durable(staging / MANIFEST, record.encode())
        fsync_path(staging)  # the directory renamed into place below is the unit that appears atomically
    except (OSError, RuntimeError, SafetensorError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointWriteError(f"writing checkpoint {str(final)!r} failed: {_io_failure(error)}; "
                                   + after_a_failed_write(final, "free space or fix the disk")) from error
    if final.is_symlink() or (final.exists() and not final.is_dir()):  # never followed; a file is no checkpoint
        final.unlink()
    elif final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    fsync_path(final.parent)


def _io_failure(error: BaseException) -> str:
    """What the disk said, from an error a checkpoint write raised; the error itself if it is not the disk's.

    torch.save reports its file's OSError as a RuntimeError; safetensors reports it as a SafetensorError
    (``Error while serializing: I/O error: No space left on device (os error 28)``).
    """
    if isinstance(error, OSError):
        return str(error.strerror or error)
    if isinstance(error.__context__, OSError):
        return str(error.__context__.strerror or error.__context__)
    if isinstance(error, SafetensorError) and "I/O error: " in str(error):
        return str(error).split("I/O error: ", 1)[1]
    raise error


def _own_storage(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors safetensors accepts: contiguous, none sharing storage (tied weights get a copy)."""
    seen: set[int] = set()
    tensors = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.contiguous().clone()
        seen.add(storage)
        tensors[name] = tensor
    return tensors


def _check_complete(path: Path) -> None:
    """Raise if a safetensors file is shorter than its header says (its writer can drop a failed flush)."""
    with open(path, "rb") as handle:
        header_bytes = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_bytes) or b"{}")
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if path.stat().st_size != 8 + header_bytes + end:
        raise OSError(errno.EIO, f"short write: {path.name} has {path.stat().st_size} bytes, its header says "
                      f"{8 + header_bytes + end}")  # fmt: skip


def _open_for_state(path: Path) -> BinaryIO:
    """A Python file for ``torch.save``: a full disk then surfaces as the ``OSError`` behind torch's error."""
    return open(path, "wb")


def _write_durable(path: Path, data: bytes) -> None:
    """Write and fsync a new file inside a staging directory (no rename of its own: the directory is renamed)."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _digest(path: Path) -> FileRecord:
    return FileRecord(sha256=sha256_file(path), bytes=path.stat().st_size)


def _digest_and_sync(path: Path) -> FileRecord:
    record = _digest(path)
    fsync_path(path)
    return record


def load_verified(verified: VerifiedCheckpoint, map_location: Any = None) -> dict[str, Any]:
    """The checkpoint dict of a verified checkpoint, deserialized from the very bytes that were hashed.

    Weights come from safetensors; everything else through ``torch.load(weights_only=True)``, so no
    pickled code from a checkpoint ever runs.
    """
    state = load_trainer_state(verified, map_location)
    if verified.sharded:
        raise CheckpointError(f"checkpoint {str(verified.path)!r} is sharded (one file per rank): resume it with "
                              "the sharded strategy (configs/overlays/fsdp.yaml), or read it as one model after "
                              "`python -m lit_psion ckpt consolidate RUN_DIR`")  # fmt: skip
    if WEIGHTS not in verified.contents:
        raise CheckpointError(f"checkpoint {str(verified.path)!r} lacks {WEIGHTS}; it was not written by lit_psion")
    try:
        weights = safetensors_load(verified.contents[WEIGHTS])
    except Exception as error:  # a malformed safetensors header
        raise CheckpointError(f"checkpoint {str(verified.path)!r} cannot be loaded safely: "
                              f"{type(error).__name__}: {error}") from error  # fmt: skip
    if map_location is not None:
        weights = {name: tensor.to(map_location) for name, tensor in weights.items()}
    state["state_dict"] = weights
    return state


def load_trainer_state(verified: VerifiedCheckpoint, map_location: Any = None) -> dict[str, Any]:
    """The trainer state (``trainer_state.pt``) of a verified checkpoint, through ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: it is missing, not loadable without running pickled code, or at another step
            than the manifest.
    """
    where = str(verified.path)
    if STATE not in verified.contents:
        raise CheckpointError(f"checkpoint {where!r} lacks {STATE}; it was not written by lit_psion")
    try:
        state_bytes = io.BytesIO(verified.contents[STATE])
        state = torch.load(state_bytes, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load refusing a pickled object
        raise CheckpointError(f"checkpoint {where!r} cannot be loaded safely ({load_refusal(error)}); lit_psion "
                              "loads tensors and plain data only: give a checkpoint it wrote") from error  # fmt: skip
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {where!r} holds no trainer state; it was not written by lit_psion")
    if "global_step" in state and state["global_step"] != verified.step:
        raise CheckpointError(f"checkpoint {where!r}: its trainer state is at step {state['global_step']}, its "
                              f"manifest says {verified.step}; it was assembled from another checkpoint")  # fmt: skip
    return state


LIGHTNING_KEYS = ("pytorch-lightning_version", "global_step", "epoch", "loops")
"""What every trainer state Lightning dumps holds; a resume also needs the optimizer and schedule states."""


def lightning_state(state: dict[str, Any], verified: VerifiedCheckpoint, resumes: bool = False) -> dict[str, Any]:
    """``state``, if Lightning can restore from it (a digest-consistent file that is not a trainer state, a window
    revision given to ``fit`` say, would fail deep inside Lightning).

    Raises:
        CheckpointError: a key Lightning restores from is missing.
    """
    needed = (*LIGHTNING_KEYS, *(("optimizer_states", "lr_schedulers") if resumes else ()))
    if missing := [key for key in needed if key not in state]:
        raise CheckpointError(f"checkpoint {str(verified.path)!r}: its trainer state has no {missing[0]!r}, so "
                              "Lightning cannot restore from it; it was not written by a lit_psion fit (give a "
                              "checkpoint of a run's checkpoints/)")  # fmt: skip
    return state


def load_checkpoint_dir(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """Verify the checkpoint directory ``path`` and load it (each file read and hashed once)."""
    return load_verified(verify_checkpoint(path), map_location)


class _VerifiedFiles(dcp.filesystem.FileSystem):
    """DCP's file system over a verified checkpoint: only bytes that match its manifest (held, or hashed again)."""

    def __init__(self, verified: VerifiedCheckpoint) -> None:
        self.verified = verified

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Generator[io.IOBase, None, None]:
        name = Path(path).name
        if mode != "rb" or Path(path).parent != self.verified.path or name not in self.verified.manifest.files:
            raise CheckpointError(f"checkpoint {str(self.verified.path)!r}: DCP asked for {str(path)!r}, which its "
                                  "manifest does not list")  # fmt: skip
        yield io.BytesIO(self.verified.read(name))  # a shard is read and hashed again: at most one in memory


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` with the classes DCP metadata is made of, and nothing else: a forged
    ``.metadata`` cannot run code even if its manifest was forged with it."""

    MODULES = {"torch.distributed.checkpoint.metadata"}
    NAMES = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
             ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")}  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if module in self.MODULES or (module, name) in self.NAMES:
            return super().find_class(module, name)
        found = getattr(torch, name, None) if module == "torch" else None
        if found is torch.Size or isinstance(found, torch.dtype | torch.layout | torch.memory_format):
            return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP checkpoint metadata")


class _VerifiedReader(dcp.FileSystemReader):
    def __init__(self, verified: VerifiedCheckpoint) -> None:
        super().__init__(verified.path)
        self.fs = _VerifiedFiles(verified)
        self.verified = verified

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        name = ".metadata"
        if name not in self.verified.contents:
            raise CheckpointError(f"checkpoint {str(self.verified.path)!r} has no DCP .metadata in its manifest")
        try:
            metadata = _MetadataUnpickler(io.BytesIO(self.verified.contents[name])).load()
        except Exception as error:
            raise CheckpointError(f"checkpoint {str(self.verified.path)!r}: its .metadata is not DCP metadata "
                                  f"({type(error).__name__}: {error})") from error  # fmt: skip
        storage = getattr(metadata, "storage_data", None) or {}
        named = {getattr(info, "relative_path", None) for info in storage.values()}
        if unlisted := sorted(str(name) for name in named - set(self.verified.manifest.files)):
            raise CheckpointError(f"checkpoint {str(self.verified.path)!r}: its .metadata names shard file "
                                  f"{unlisted[0]!r}, which its manifest does not list (a shard removed with its "
                                  "record); restore it from a backup")  # fmt: skip
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp.metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def check_shards(verified: VerifiedCheckpoint) -> None:
    """Refuse, as a load would, a sharded checkpoint whose DCP metadata names a shard its manifest does not list."""
    if verified.sharded:
        verified_reader(verified).read_metadata()


def verified_reader(verified: VerifiedCheckpoint) -> dcp.FileSystemReader:
    """A DCP storage reader over a verified sharded checkpoint: what it loads is what was hashed.

    DCP's ``.metadata`` is a pickle: it is unpickled from the verified bytes with an allowlist of DCP's
    metadata classes only. Use it with :class:`WeightsOnlyLoadPlanner` (DCP's own planner loads
    non-tensor items, such as optimizer hyper-parameters, with ``weights_only=False``).
    """
    return _VerifiedReader(verified)


class _WeightsOnlyBytes:
    """A load planner whose non-tensor items are loaded with ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


class WeightsOnlyLoadPlanner(_WeightsOnlyBytes, dcp.DefaultLoadPlanner):
    """DCP's default load planner, loading non-tensor items with ``weights_only=True``."""


def first_failure(error: BaseException) -> BaseException:
    """The first rank's exception inside DCP's CheckpointException (which wraps every rank's), else ``error``."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))  # (exception, its stack summary)
        first = first[0] if isinstance(first, tuple) and first else first
        return first if isinstance(first, BaseException) else error
    return error


_HEADER_LENGTH = 8
"""A safetensors file's header length prefix: a little-endian unsigned 64-bit integer."""


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """``safetensors.torch.save(tensors, metadata)`` with its JSON header's keys in sorted order: the same bytes for
    the same tensors and metadata in every process.

    safetensors keeps a file's ``__metadata__`` in a hash map whose order is drawn anew in each process, so two
    writes with two or more metadata entries differ in their header's bytes about half the time (a merge made
    again, or a window's stacked adapter, got another sha256 than its receipt records). The header is rewritten
    with its keys sorted, at the same length (only the order changes), so a recorded digest can be checked by
    making the file again.
    """
    data = safetensors_save(dict(tensors), metadata=dict(metadata) if metadata is not None else None)
    size = int.from_bytes(data[:_HEADER_LENGTH], "little")
    header = json.loads(data[_HEADER_LENGTH : _HEADER_LENGTH + size])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(canonical) > size:  # (never: the same entries, reordered; kept as written rather than cut)
        return data
    return data[:_HEADER_LENGTH] + canonical.ljust(size, b" ") + data[_HEADER_LENGTH + size :]
