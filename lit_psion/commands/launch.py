"""The processes of one fit's launch: which one is rank 0, the shape torchrun gives, and how they leave together.

Lightning's own launcher (``--trainer.devices 2``) starts the other ranks as children of rank 0's process and
watches them: once one exits non-zero, or by a signal, it SIGKILLs every process, rank 0 too. So the ranks of
a fit that stops with one verdict leave after rank 0, and rank 0 reaps the ranks Lightning killed on Ctrl-C.
Under ``mesh launch`` an error no restart can fix is left for the launcher to read. No Lightning import.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_psion.core import atomic_write_json
from lit_psion.core.membership import NODE_MARKERS_ENV

if TYPE_CHECKING:
    import lightning as L

LAUNCHER_PID_ENV = "LIT_PSION_LAUNCHER_PID"
"""The pid of the fit's rank 0, for the ranks Lightning's launcher starts from it (they inherit it)."""
RANK_ZERO_GRACE_S = 30.0
"""How long a rank that Lightning's launcher started waits, before it exits non-zero, for rank 0 to exit."""
FATAL_IN_A_MESH = (2, 3, 4, 5, 6, 7, 14)
"""Exit codes no restart can fix: bad config, data, checkpoint, evidence, a full disk, divergence, the user's code."""


def is_launcher_rank_zero() -> bool:
    """Whether this process is rank 0 of its launch (torchrun sets RANK; Lightning's launcher LOCAL_RANK)."""
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def follow_torchrun(trainer: Any) -> None:
    """Under torchrun, take the node count and devices per node from the launch (an elastic launch changes them).

    The launch decides how many processes there are; a preset's or overlay's ``devices`` (the FSDP overlay's 2,
    for Lightning's own launcher) would otherwise fail Lightning's world-size check on any other launch shape.
    """
    world, local = os.environ.get("WORLD_SIZE"), os.environ.get("LOCAL_WORLD_SIZE")
    if "TORCHELASTIC_RUN_ID" not in os.environ or not (world and local and world.isdigit() and local.isdigit()):
        return
    trainer.num_nodes, trainer.devices = max(1, int(world) // max(1, int(local))), int(local)


def forget_killed_ranks(trainer: L.Trainer) -> None:
    """After Ctrl-C, Lightning's launcher has SIGKILLed the ranks it started: reap them and empty the list its
    child-process observer watches, or the observer, seeing a child ended by a signal, SIGKILLs rank 0 too
    while it exits 130."""
    children = getattr(trainer.strategy.launcher, "procs", None)
    if isinstance(children, list):
        for child in children:
            child.wait()
        children.clear()


def leave_after_rank_zero(parent: int) -> None:
    """A rank that Lightning's launcher started (a child of rank 0's process, ``parent``) and that stops with a
    verdict every rank reaches (a pause, divergence, a failed checkpoint write) leaves after rank 0 does, so
    the launcher cannot cut rank 0's own exit short: its exit code, its run.json, its dashboard. Bounded,
    because a verdict this rank reached alone leaves rank 0 waiting in a collective, which only that kill
    ends. The caller lets exit 1 (a bug) leave at once.
    """
    if os.environ.get(LAUNCHER_PID_ENV) != str(parent) or os.environ.get("LOCAL_RANK", "0") == "0":
        return  # rank 0, or a rank another launcher started (torchrun's agent acts on each worker's own code)
    deadline = time.monotonic() + RANK_ZERO_GRACE_S
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: leave now, with the code already chosen
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.05)


def leave_together(code: int) -> None:
    """A torchrun worker that stops with a verdict every rank reaches (exit ``code``, one of
    :data:`FATAL_IN_A_MESH`) waits, bounded, until every rank has reached it (through the launch's store), before
    it exits.

    A rank that left at once would close its connections while another rank's process group may still be
    finishing the last collective's exchange; gloo then aborts that rank (SIGABRT), and the verdict's exit code
    is lost. Bounded by :data:`LEAVE_TOGETHER_S`, since a verdict one rank reached alone has no one to wait
    for. Not for a pause or a membership change, nor under ``mesh launch``: those leave on the mesh's schedule.
    """
    if code not in FATAL_IN_A_MESH or "TORCHELASTIC_RUN_ID" not in os.environ or os.environ.get(NODE_MARKERS_ENV):
        return
    try:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized() or (world := dist.get_world_size()) < 2:
            return
        store = dist.distributed_c10d._get_default_store()
        deadline = time.monotonic() + LEAVE_TOGETHER_S
        store.set_timeout(datetime.timedelta(seconds=LEAVE_TOGETHER_S))  # a store host gone silent: not 30 min
        # One count for the whole launch (a restart count is each agent's own): this attempt's ranks make it up
        # to the next multiple of the world size.
        arrived = store.add("lit_psion/leave", 1)
        everyone = -(-arrived // world) * world
        while arrived < everyone and time.monotonic() < deadline:
            time.sleep(0.05)
            arrived = store.add("lit_psion/leave", 0)
    except (Exception, KeyboardInterrupt):  # the store left with another node, or a second Ctrl-C: leave now
        return


LEAVE_TOGETHER_S = 10.0
"""How long a torchrun worker that stops with a verdict waits for every rank to reach one."""


def tell_the_launcher_of_a_bug(message: str) -> None:
    """Under ``mesh launch``: a worker's unexpected error (exit 1, a bug of lit_psion's), for the launcher, which stops
    the node once workers of two of its starts have failed so (a restart does not fix a bug; it was retried
    ``--max-restarts`` times, each said only as torchrun's "failed (exitcode: 1)")."""
    markers = os.environ.get(NODE_MARKERS_ENV)
    if markers and Path(markers).is_dir():
        start = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        with contextlib.suppress(OSError):
            atomic_write_json(Path(markers) / f"bug-{start}-{os.getpid()}.json", {"start": start, "message": message})


def tell_the_launcher(code: int, message: str) -> None:
    """Under ``mesh launch``: an error no restart can fix stops the node instead of its agent retrying it
    ``--max-restarts`` times."""
    markers = os.environ.get(NODE_MARKERS_ENV)
    if markers and code in FATAL_IN_A_MESH and Path(markers).is_dir():
        with contextlib.suppress(OSError):
            atomic_write_json(Path(markers) / f"fatal-{os.getpid()}.json", {"code": code, "message": message})
