"""One writer per directory: an exclusive, non-blocking ``flock`` on ``<directory>/.lock``.

A run or a session directory is written by one process at a time. :class:`RunLock` takes the lock
or fails at once with :class:`~lit_psion.core.errors.LockedError` (exit 8) naming the holder: its
pid, host and since when, which the holder writes into the lock file once it has the lock::

    with RunLock(session_dir, purpose="session run s1"):
        ...  # read, train, write: no other RunLock on session_dir succeeds meanwhile

The lock is the kernel's, not the file's: it goes when its holder's process ends, however it ends
(SIGKILL included), so a lock file left behind never blocks anyone and is never to be deleted by
hand. It is not re-entrant: a second ``RunLock`` on the same directory fails even in the same
process. A program started by the holder does not inherit it (the descriptor is close-on-exec),
but a child forked without exec (a ``fork`` DataLoader worker) shares it until that child exits.
``flock`` is reliable on local file systems; on network file systems it depends on the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
import stat
import tempfile
import time
from pathlib import Path
from types import TracebackType

from lit_psion.core.errors import ConfigError, LockedError

LOCK_FILE = ".lock"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LockHolder:
    """Who holds a directory's lock, as the holder recorded it in the lock file."""

    pid: int
    """The holding process."""
    host: str
    """The host it runs on."""
    since: str
    """When it took the lock (UTC, ISO 8601)."""
    purpose: str = ""
    """What it is doing (``session run s1``, ``fit``), for the message a second writer gets."""

    def describe(self) -> str:
        if self.pid == 0:  # lock_holder's stand-in for a holder that has not written its record yet
            return "another process (it has not recorded itself yet)"
        doing = f" ({self.purpose})" if self.purpose else ""
        return f"pid {self.pid} on {self.host} since {self.since}{doing}"


class RunLock:
    """An exclusive lock on ``directory`` (a context manager; or :meth:`acquire` / :meth:`release`).

    Args:
        directory: The directory to lock; it must exist. The lock file is ``directory/.lock``.
        purpose: What the holder is doing, shown to a process that finds the directory locked.

    Raises:
        LockedError: from :meth:`acquire` (and ``with``): another holder has the lock (the message
            names it), or the lock file cannot be opened (a symlink, no permission, no directory).
    """

    def __init__(self, directory: str | Path, purpose: str = "") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.purpose = purpose
        self.holder: LockHolder | None = None
        """This lock's own holder record while it is held, else None."""
        self._fd: int | None = None
        self._pid = 0

    def acquire(self) -> RunLock:
        """Take the lock now or raise :class:`LockedError`; never waits."""
        if self._fd is not None:
            raise LockedError(f"{str(self.directory)!r} is already locked by this RunLock")
        fd = _open(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            other = _read_holder(fd)
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockedError(f"cannot lock {str(self.directory)!r}: {error.strerror}") from error
            who = other.describe() if other is not None else "another process (it has not recorded itself yet)"
            message = (f"{str(self.directory)!r} is locked by {who}: another writer is using it; wait for it to "
                       "finish (the lock goes with its process: no lock file needs removing)")  # fmt: skip
            raise LockedError(message) from None
        try:
            _can_create_files(self.directory)
        except BaseException:  # (a full disk, an interrupt): the lock is not kept by a writer that cannot start
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        self.holder = LockHolder(pid=os.getpid(), host=socket.gethostname(), purpose=self.purpose,
                                 since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(dataclasses.asdict(self.holder), sort_keys=True) + "\n").encode(), 0)
        self._fd, self._pid = fd, os.getpid()
        _HELD.add(fd)
        return self

    def release(self) -> None:
        """Give the lock up (clearing the holder record); releasing a lock not held does nothing."""
        fd, self._fd, self.holder = self._fd, None, None
        if fd is None or os.getpid() != self._pid:
            return  # a forked child: its copy of the descriptor was closed when it was forked
        _HELD.discard(fd)
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        """Whether this RunLock holds its directory's lock."""
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def lock_holder(directory: str | Path) -> LockHolder | None:
    """Who holds ``directory``'s lock right now (None: nobody does, or there is no lock file).

    A holder that has not recorded itself yet is reported as pid 0 on host ``unknown``. For reports
    (``doctor``); to write, take a :class:`RunLock` instead of asking first.
    """
    path = Path(directory) / LOCK_FILE
    if not path.is_file() or path.is_symlink():
        return None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        return holder if holder is not None else LockHolder(pid=0, host="unknown", since="unknown")
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


_HELD: set[int] = set()
"""The descriptors of the locks this process holds."""


def _close_in_child() -> None:
    """A forked child (a DataLoader worker) does not hold its parent's locks: an inherited descriptor would keep the
    run locked after the parent died, until the last child exited."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def unusable_lock(directory: str | Path) -> str | None:
    """What is in ``directory``'s lock file's place when no lock can be taken through it (a writer refuses it), or
    None: no lock file, or a plain one."""
    path = Path(directory) / LOCK_FILE
    if not (path.exists() or path.is_symlink()) or (path.is_file() and not path.is_symlink()):
        return None
    what = "a symlink" if path.is_symlink() else "a directory" if path.is_dir() else "not a regular file"
    return f"is {what}, not a lock file: a fit or command that writes the run refuses it; remove it"


def _can_create_files(directory: Path) -> None:
    """A writer replaces its records through new files beside them (a temporary file, then a rename): a directory
    whose mode lets its lock file (made before) be opened but no file be made in it would let the writer append
    to what is there and then fail at its first record, a half-written run. So a file is made and removed first."""
    try:
        fd, name = tempfile.mkstemp(prefix=".write-check.", dir=directory)
    except OSError as error:
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise _not_writable(directory, error) from error
        raise
    os.close(fd)
    os.unlink(name)


def _not_writable(directory: Path, error: OSError) -> ConfigError:
    return ConfigError(f"{str(directory)!r} cannot be written ({error.strerror}); make it writable, or give the "
                       "command a directory you can write (--out; for a run, copy it somewhere writable and give "
                       "--trainer.default_root_dir there)")  # fmt: skip


def _open(path: Path) -> int:
    """The lock file, created if need be; never followed through a symlink."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, socket or device: no lock can be taken through it
            os.close(fd)
            raise ConfigError(f"cannot lock {str(path.parent)!r}: {str(path)!r} is not a regular file (a FIFO, "
                              "socket or device), not a lock file, so no process holds a lock through it; remove it "
                              "(each writer makes the file it locks)")  # fmt: skip
        return fd
    except OSError as error:
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):  # nobody holds it: the directory cannot be written
            raise _not_writable(path.parent, error) from error
        if error.errno in (errno.ELOOP, errno.EISDIR):  # something else in the lock file's place: nobody holds it
            what = "a symlink" if error.errno == errno.ELOOP else "a directory"
            raise ConfigError(f"cannot lock {str(path.parent)!r}: {str(path)!r} is {what}, not a lock file, so no "
                              "process holds a lock through it; remove it (each writer makes the file it locks)"
                              ) from error  # fmt: skip
        raise LockedError(f"cannot lock {str(path.parent)!r}: cannot open {str(path)!r}: {error.strerror}") from error


def _read_holder(fd: int) -> LockHolder | None:
    """The holder record in the lock file, or None if there is none yet (or it is not one)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"null")
        return LockHolder(pid=int(record["pid"]), host=str(record["host"]), since=str(record["since"]),
                          purpose=str(record.get("purpose", "")))  # fmt: skip
    except (OSError, ValueError, TypeError, KeyError):
        return None
