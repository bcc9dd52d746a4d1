"""Typed errors, the failure class each one records in run.json, and its CLI exit code (docs/cli.md)."""

from __future__ import annotations

import errno
import os
import re
import site
import sys
import sysconfig
import traceback
from pathlib import Path


class LitPsionError(Exception):
    """Base of the errors lit_psion reports to a user as one line."""

    exit_code = 1
    failure_class = "internal"

    def __init__(self, *args: object) -> None:
        # An inner error's advice meant for a programmer (a number of 5000 digits in a JSON file names a Python
        # setting that would accept it) is not the fix for a file: the line's own fix is.
        super().__init__(*(arg.replace(PYTHON_ADVICE, "") if isinstance(arg, str) else arg for arg in args))


PYTHON_ADVICE = "; use sys.set_int_max_str_digits() to increase the limit"


class ConfigError(LitPsionError, ValueError):
    """A bad setting: the message quotes the value and says what would be valid."""

    exit_code = 2
    failure_class = "config_invalid"


class DataError(LitPsionError, ValueError):
    """Bad or missing data: a missing file, an empty corpus, too little text, a changed manifest."""

    exit_code = 3
    failure_class = "data_invalid"


class DataConfigError(ConfigError):
    """A bad data setting (``batch_size`` below 1, an unknown split rule, a vocabulary too small): exit 2."""


class DataManifestMismatch(DataError):
    """A resume against data that is not the data the checkpoint was trained on: exit 3."""


class CheckpointError(LitPsionError, RuntimeError):
    """A checkpoint that cannot be found or trusted."""

    exit_code = 4
    failure_class = "checkpoint_untrusted"


class OtherModelSettings(CheckpointError):
    """A resume refused because this config builds another model than the one the checkpoint's run trained."""


class EvidenceError(LitPsionError):
    """Evidence that does not verify: a receipt chain edited, reordered, or cut short."""

    exit_code = 5
    failure_class = "evidence_invalid"


class SupersededCheckpoint(CheckpointError):
    """A checkpoint an attempt killed before its durable receipt left, which a later attempt resumed before: vouched
    for by nothing and used by nothing (the resumed attempt writes its step again)."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be made durable (disk full, I/O error): the previous one stays pointed at."""

    exit_code = 6
    failure_class = "checkpoint_flush_failed"


class StorageFull(LitPsionError):
    """A run's file other than a checkpoint (its data manifest, run.json, a cache) could not be written: the
    disk or quota is full, or the device failed."""

    exit_code = 6
    failure_class = "storage_full"


UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
"""The errnos of a write into a place this process may not write."""
FULL_STORAGE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}
"""The errnos of a write that more space (or another disk) would let through."""


class TransactionError(LitPsionError):
    """Too many consecutive optimizer steps rolled back: training is diverging, so it stops."""

    exit_code = 7
    failure_class = "diverged"


class TrainingDiverged(TransactionError):
    """The training loss is not finite on a step no transactional strategy could roll back (exit 7, as a diverging
    transactional run's): run.json's failure names divergence, not a transaction that never was."""


class LockedError(LitPsionError):
    """Another process holds the lock on a directory it is writing (a run, a session): exit 8, nothing written."""

    exit_code = 8
    failure_class = "locked"


class MembershipChanged(LitPsionError):
    """A mesh worker stopped at a step boundary, after a checkpoint, because the mesh re-forms (a node joins,
    drains or restarts): expected and receipted; its agent restarts it in the next membership epoch."""

    exit_code = 10
    failure_class = "membership_changed"


class WorkerCrashed(LitPsionError):
    """A collective failed because another worker of the mesh is gone (killed, crashed, its node lost)."""

    exit_code = 11
    failure_class = "worker_crashed"


class RendezvousTimeout(LitPsionError):
    """A mesh node's agent could not form a mesh of its minimum size within the join timeout."""

    exit_code = 12
    failure_class = "rendezvous_timeout"


PEER_LOSS_TYPES = {"DistBackendError", "DistNetworkError", "DistStoreError"}
"""torch.distributed's error types for a lost peer or store (named here: core does not import torch)."""
PEER_LOSS_MESSAGES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Socket Timeout",
                      "Timed out waiting", "NCCL communicator was aborted")  # fmt: skip
"""What gloo and NCCL say when the worker at the other end of a collective is gone."""


USER_CODE_EXIT = 14
"""The exit code of an exception raised in a user's own code plugged into a command (``user_code_failed``)."""


def raised_at(error: BaseException) -> str:
    """``" (raised at FILE:LINE, in FUNCTION)"`` for the innermost frame of ``error``'s traceback that is not in an
    installed library or the standard library: the user's callback or module that raised, or lit_psion's own code;
    ``""`` when every frame is a library's."""
    frame = _innermost_not_a_librarys(error)
    return "" if frame is None else f" (raised at {frame.filename}:{frame.lineno}, in {frame.name})"


def raised_in_user_code(error: BaseException) -> bool:
    """Whether ``error`` came from code a user plugged in (a callback, a model, a data module, a receipt kind): the
    innermost frame of its traceback outside installed libraries is not in one of lit_psion's own modules. An
    error lit_psion's code raised, or one only libraries' frames show, is not (it is lit_psion's to answer for)."""
    frame = _innermost_not_a_librarys(error)
    if frame is None:
        return False
    ours = {os.path.abspath(file) for name, module in list(sys.modules.items())
            if (name == "lit_psion" or name.startswith("lit_psion.")) and (file := getattr(module, "__file__", None))}
    where = os.path.abspath(frame.filename)
    return where not in ours and not where.startswith(_OWN)


_OWN = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
"""lit_psion's package directory, wherever it is installed (its top-level packages elsewhere are found by module)."""


def _innermost_not_a_librarys(error: BaseException) -> traceback.FrameSummary | None:
    paths = sysconfig.get_paths()
    libraries = (paths["stdlib"], paths["purelib"], paths["platlib"], *site.getsitepackages(),
                 site.getusersitepackages())
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename.startswith(_OWN) or not frame.filename.startswith((*libraries, "<")):
            return frame
    return None


def _file_where_a_directory_belongs(error: BaseException) -> str | None:
    """For a file made or opened under a path one of whose directories is a file (a cache's ``tokenizers`` left as
    a file): that file; None for any other error (a directory that already exists is no such error)."""
    if not isinstance(error, OSError) or error.errno not in (errno.ENOTDIR, errno.EEXIST) or not error.filename:
        return None
    path = Path(os.fsdecode(error.filename))
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else str(candidate)
    return None


def _link_loop(error: BaseException) -> str | None:
    """The path of a symbolic link loop ``error`` ran into (``Path.resolve`` raises a RuntimeError on one, opening
    through one an ELOOP OSError), else None."""
    if isinstance(error, RuntimeError) and str(error).startswith("Symlink loop from "):
        return str(error).removeprefix("Symlink loop from ").strip("'\"")
    if isinstance(error, OSError) and error.errno == errno.ELOOP:
        return str(error.filename)
    return None


def _out_of_memory(error: BaseException) -> ConfigError | None:
    """An allocation the machine refused (torch's CPU allocator, CUDA's, Python's own): the sizes asked for, not a
    bug. A model under :mod:`lit_psion.nn.sizes`' limit can still not fit beside what else the machine holds."""
    text = str(error).split("\n", 1)[0]
    cpu = isinstance(error, RuntimeError) and "can't allocate memory" in text
    if not (cpu or isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"):
        return None
    asked = text.split("DefaultCPUAllocator: ", 1)[-1].split(" Error code", 1)[0].strip() or type(error).__name__
    if (data := _making_the_data(error)) is not None:
        return ConfigError(f"the machine ran out of memory ({asked}) while {data.__name__} made its data; lower the "
                           f"data's sizes (its sample counts, batch or context size: --data.help "
                           f"{data.__module__}.{data.__qualname__} lists them), or run where more memory is free")
    return ConfigError(f"the machine ran out of memory ({asked}); lower the model's sizes (its width, depth or "
                       "nodes: --model.help CLASS_PATH lists them), the data's batch or context size, or run where "
                       "more memory is free")  # fmt: skip


def _making_the_data(error: BaseException) -> type | None:
    """The class of the LightningDataModule whose method ``error`` was raised in (a generator asked for more
    samples than fit), else None: the model's sizes are then not the ones to lower."""
    lightning = sys.modules.get("lightning.pytorch")
    if lightning is None:
        return None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        if isinstance(owner, lightning.LightningDataModule):
            return type(owner)
    return None


def _monitors_a_missing_metric(error: BaseException) -> bool:
    """Lightning's ``EarlyStopping`` monitoring a name not logged by the time it checks (a typo, a metric of another
    model, a training metric checked before its first row): it raises a RuntimeError that lists the names it could
    use, a setting to change, not a bug."""
    return isinstance(error, RuntimeError) and str(error).startswith("Early stopping conditioned on metric")


def lit_psion_cause(error: BaseException) -> LitPsionError | None:
    """The lit_psion error behind ``error``, following the exception chain (Lightning wraps some); a
    collective that failed because a peer is gone is a :class:`WorkerCrashed`."""
    seen: set[int] = set()
    current: BaseException | None = error
    lost_peer: BaseException | None = None
    full: OSError | None = None
    locked: OSError | None = None
    while current is not None and id(current) not in seen:
        if isinstance(current, LitPsionError):
            return current
        if (memory := _out_of_memory(current)) is not None:
            return memory
        if (loop := _link_loop(current)) is not None:
            return ConfigError(f"{loop!r} is a symbolic link that leads back to itself (a link loop); remove or fix "
                               "the link, or give another path")  # fmt: skip
        if (blocked := _file_where_a_directory_belongs(current)) is not None:
            inside = "" if blocked == os.fsdecode(current.filename) else f" (for {os.fsdecode(current.filename)!r})"
            return ConfigError(f"{blocked!r} is a file where a directory belongs{inside}; move it aside or remove it "
                               "(a cache rebuilds what it held), or give another place "
                               "(--data.cache_dir or LIT_PSION_CACHE for a cache, --trainer.default_root_dir for "
                               "runs)")  # fmt: skip
        if isinstance(current, OSError) and current.errno == errno.ENAMETOOLONG:
            return ConfigError(f"path {current.filename!r} is too long for the file system (a name over 255 bytes, "
                               "or the whole path over 4,096); give a shorter path")  # fmt: skip
        if type(current).__name__ == "MisconfigurationException" or _monitors_a_missing_metric(current):
            return ConfigError(f"Lightning refuses the setup: {current}")  # its refusal of a setting or a callback
        if lost_peer is None and _is_peer_loss(current):
            lost_peer = current
        if full is None and isinstance(current, OSError) and current.errno in FULL_STORAGE:
            full = current  # a fallback, as a lost peer is: clean-up after a typed failure often hits the disk too
        if locked is None and isinstance(current, OSError) and current.errno in UNWRITABLE and current.filename:
            locked = current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    if full is not None:
        where = f" {full.filename!r}" if full.filename else ""
        return StorageFull(f"reading or writing{where} failed: {full.strerror or full}; free space (or fix the "
                           "device), then run the command again (a fit continues with --ckpt_path last)")  # fmt: skip
    if locked is not None:  # a cache or directory this user may not write (read-only, another owner's)
        return ConfigError(f"{locked.filename!r} cannot be used ({locked.strerror}); give this user access to it "
                           "(its mode, owner or mount, or its directory's), or another "
                           "place (--data.cache_dir or LIT_PSION_CACHE for a cache, --trainer.default_root_dir for "
                           "runs)")  # fmt: skip
    if lost_peer is not None:
        first_line = (str(lost_peer).strip().splitlines() or [type(lost_peer).__name__])[0]
        agent = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") not in ("", "0")  # an agent that restarts us
        recovers = ("its agent re-forms the mesh and it resumes from the latest durable checkpoint" if agent else
                    "continue the run with --ckpt_path last, from its latest durable checkpoint")  # fmt: skip
        peers = "of the mesh" if agent else "of the fit"
        return WorkerCrashed(f"another worker {peers} is gone ({first_line[:200]}); {recovers}")
    return None


def _is_peer_loss(error: BaseException) -> bool:
    return type(error).__name__ in PEER_LOSS_TYPES or (
        isinstance(error, RuntimeError) and any(text in str(error) for text in PEER_LOSS_MESSAGES))


def failure_class(error: BaseException) -> str:
    """The failure class run.json records for a fit that ended with ``error``."""
    cause = lit_psion_cause(error)
    if cause is not None:
        return cause.failure_class
    return "user_code_failed" if raised_in_user_code(error) else "internal"


def load_refusal(error: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` refused, in a few words: never its advice to load the file unsafely."""
    text = str(error)
    if (found := re.search(r"Unsupported global: GLOBAL (\S+)", text)) is not None:
        return f"it holds a pickled {found[1]}, which loading would run"
    if "weights_only" in text or "Weights only load failed" in text:
        return "it holds pickled objects other than tensors and plain data"
    return f"{type(error).__name__}: {(text.strip().splitlines() or [''])[0][:200]}"
