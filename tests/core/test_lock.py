"""RunLock: one writer per directory, across real processes; the second gets LockedError naming the holder."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lit_psion.core.errors import ConfigError, LockedError
from lit_psion.core.lock import LOCK_FILE, LockHolder, RunLock, lock_holder
from tests.helpers import REPO_ROOT

# A process that takes the lock, says so, and holds it until its stdin closes (or it is killed).
HOLD = """
import sys
from lit_psion.core.lock import RunLock
with RunLock(sys.argv[1], purpose="test holder"):
    print("held", flush=True)
    sys.stdin.read()
"""


def hold(directory: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)  # fmt: skip
    assert process.stdout is not None
    return process


def wait_held(process: subprocess.Popen) -> None:
    assert process.stdout is not None and process.stdout.readline().strip() == "held"


def test_a_second_process_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    holder = hold(tmp_path)
    try:
        wait_held(holder)
        with pytest.raises(LockedError) as refused:
            RunLock(tmp_path).acquire()
        message = str(refused.value)
        assert f"pid {holder.pid} on {socket.gethostname()} since " in message and "(test holder)" in message
        assert str(tmp_path) in message and "\n" not in message
        assert (refused.value.exit_code, refused.value.failure_class) == (8, "locked")
        recorded = lock_holder(tmp_path)
        assert recorded is not None and (recorded.pid, recorded.purpose) == (holder.pid, "test holder")
    finally:
        holder.communicate("")  # closes stdin: the holder releases and exits
    assert holder.returncode == 0
    assert lock_holder(tmp_path) is None and (tmp_path / LOCK_FILE).read_text() == ""  # released and cleared
    with RunLock(tmp_path, purpose="next") as lock:
        assert lock.held and lock.holder is not None and lock.holder.pid == os.getpid()


def test_a_killed_holder_leaves_no_lock(tmp_path: Path) -> None:
    holder = hold(tmp_path)
    wait_held(holder)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid  # the record stays behind...
    assert lock_holder(tmp_path) is None
    with RunLock(tmp_path, purpose="after the kill") as lock:  # ...but is no lock
        assert json.loads((tmp_path / LOCK_FILE).read_text())["purpose"] == "after the kill"
        assert lock.holder is not None and lock.holder.pid == os.getpid()


# A holder with a forked child (as a DataLoader worker is) that outlives it.
HOLD_WITH_A_CHILD = """
import os, sys, time
from lit_psion.core.lock import RunLock
with RunLock(sys.argv[1], purpose="test holder"):
    if os.fork() == 0:
        open(sys.argv[2], "w").close()  # forked (its copy of the lock closed), as a DataLoader worker is; working
        time.sleep(30)
        os._exit(0)
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_killed_holders_forked_children_do_not_keep_the_lock(tmp_path: Path) -> None:
    """A fit killed with DataLoader workers left its run locked (exit 8, naming the dead pid) until they exited."""
    running = tmp_path / "child-running"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WITH_A_CHILD, str(tmp_path), str(running)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                              start_new_session=True)  # fmt: skip
    try:
        wait_held(holder)
        deadline = time.monotonic() + 30
        while not running.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running.exists(), "the forked child runs"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        with RunLock(tmp_path, purpose="right after the kill") as lock:
            assert lock.held
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the orphaned child


RACE = """
import sys, time
from pathlib import Path
from lit_psion.core.errors import ConfigError, LockedError
from lit_psion.core.lock import RunLock
start = Path(sys.argv[2])
print("ready", flush=True)
while not start.exists():
    time.sleep(0.001)
try:
    with RunLock(sys.argv[1]):
        print("acquired", flush=True)
        sys.stdin.read()  # hold the lock until the test has every other outcome
except LockedError as error:
    print("refused", error.exit_code, flush=True)
"""


def test_of_processes_racing_for_the_lock_exactly_one_wins(tmp_path: Path) -> None:
    start = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), str(start)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT) for _ in range(4)]  # fmt: skip
    watchdog = threading.Timer(120, lambda: [racer.kill() for racer in racers])  # a wedged racer fails, never hangs
    watchdog.start()
    try:
        for racer in racers:
            assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
        start.touch()  # every racer is at its start line
        outcomes = {racer: racer.stdout.readline().strip() for racer in racers if racer.stdout is not None}
        assert sorted(outcomes.values()) == ["acquired", "refused 8", "refused 8", "refused 8"]
    finally:
        watchdog.cancel()
        for racer in racers:
            racer.communicate("", timeout=60)


def test_the_lock_is_not_reentrant_and_a_with_block_releases_on_error(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), lock:
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()  # the same directory, the same process: refused
        with pytest.raises(LockedError, match="already locked by this RunLock"):
            lock.acquire()
        raise RuntimeError("boom")
    assert not lock.held and lock.holder is None
    lock.release()  # releasing twice is harmless
    with RunLock(tmp_path):
        pass


@pytest.mark.parametrize("what", ["a symlink", "a directory", "not a regular file (a FIFO, socket or device)"])
def test_a_lock_file_that_is_not_a_file_is_refused_not_followed_and_not_called_held(tmp_path: Path,
                                                                                    what: str) -> None:  # fmt: skip
    """Said exit 8 ("cannot lock"), as if another writer held it: nobody can, and the fix is to remove it."""
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    if what == "a symlink":
        (tmp_path / LOCK_FILE).symlink_to(target)
    elif what == "a directory":
        (tmp_path / LOCK_FILE).mkdir()
    else:
        os.mkfifo(tmp_path / LOCK_FILE)  # (taken, it failed on writing its holder: exit 1)
    with pytest.raises(ConfigError, match=re.escape(f"is {what}, not a lock file, so no process holds a lock through "
                                                    "it; remove it")) as raised:  # fmt: skip
        RunLock(tmp_path).acquire()
    assert raised.value.exit_code == 2
    assert target.read_text() == "keep" and lock_holder(tmp_path) is None


def test_a_missing_directory_is_a_locked_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(LockedError, match=r"cannot open .*missing"):
        RunLock(tmp_path / "missing").acquire()


def test_the_holder_describes_itself() -> None:
    holder = LockHolder(pid=12, host="h", since="2025-01-01T00:00:00Z", purpose="session run s1")
    assert holder.describe() == "pid 12 on h since 2025-01-01T00:00:00Z (session run s1)"
    assert LockHolder(pid=12, host="h", since="t").describe() == "pid 12 on h since t"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only mode: needs an unprivileged user")
def test_a_directory_no_one_can_write_is_a_config_error_not_a_held_lock(tmp_path: Path) -> None:
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="cannot be written"):
            RunLock(tmp_path, purpose="fit").acquire()
    finally:
        tmp_path.chmod(0o755)
