"""``ElasticMeshStrategy``: DDP whose every worker-group start is a receipted membership epoch (issue 14).

Launched by torchrun (elastic or not), each worker names its node (``LIT_PSION_NODE_ID``, else the
host name). At setup, every rank gathers every rank's node id, so all ranks hold the same member
list; the previous membership comes from the checkpoint being resumed (not from any agent's own
restart count), so the new ``membership_epoch`` is identical on every rank. Rank 0 writes
``membership.json`` and, once training starts, a ``membership`` receipt: epoch, previous and new
members with their states, world sizes, the change (start, grow, shrink, replace, restart), the
launcher's settings, the resumed checkpoint's manifest digest, the global cursor and the steps
replayed since that checkpoint. Checkpoints record the membership they were written in.

Still to come (issue 14, open): the ``mesh`` commands (store, launch, status, drain), draining,
automatic resume without ``--ckpt_path``, and the failure classes of a crashed worker.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from typing_extensions import override

from lit_psion.core import run_context
from lit_psion.core.chain import emit_receipt
from lit_psion.core.checkpoint import MANIFEST_FILE
from lit_psion.core.contracts import Resumable
from lit_psion.core.digest import sha256_file
from lit_psion.core.membership import (
    MESH_SETTINGS_ENV,
    Membership,
    MembershipChange,
    classify,
    next_membership,
    write_membership,
)
from lit_psion.core.receipts import MembershipReceipt
from lit_psion.strategies.transactional import Transactional

NODE_ID_ENV = "LIT_PSION_NODE_ID"
LAUNCH_SETTINGS_ENV = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RESTART_COUNT",
                       "GROUP_WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_USE_AGENT_STORE")  # fmt: skip
"""What a torchrun launch says about itself, recorded in each membership receipt."""


def node_id() -> str:
    """This worker's node: ``LIT_PSION_NODE_ID`` (set per agent by ``mesh launch``), else the host name."""
    return os.environ.get(NODE_ID_ENV) or socket.gethostname()


class ElasticMeshStrategy(DDPStrategy):
    """DDP with membership epochs (registry name ``elastic_mesh``; gloo on CPU, NCCL on CUDA).

    Args:
        node_id: This worker's node id (default: ``LIT_PSION_NODE_ID`` or the host name).
        **kwargs: ``DDPStrategy``'s arguments.
    """

    def __init__(self, node_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.node_id = node_id
        self.membership: Membership | None = None
        self.previous: Membership | None = None
        self.change: MembershipChange | None = None

    @override
    def setup(self, trainer: L.Trainer) -> None:
        if "TORCHELASTIC_RUN_ID" in os.environ:
            _exit_with_the_agent()
        super().setup(trainer)
        members = self._gather_node_ids()
        run = run_context(trainer)
        manifest = run.resume_manifest
        recorded = manifest.membership if manifest is not None and run.resume_from is not None else None
        self.previous = Membership.from_json_dict(recorded) if recorded else None
        self.change = classify(self.previous, members)
        self.membership = next_membership(self.previous, members, self.world_size)
        if self.is_global_zero:
            write_membership(run.layout, self.membership)

    def _gather_node_ids(self) -> list[str]:
        """Every rank's node id, in rank order, the same list on every rank."""
        mine = self.node_id or node_id()
        if not (dist.is_available() and dist.is_initialized()) or self.world_size == 1:
            return [mine]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, mine)  # Lightning's all_gather takes tensors; node ids are strings
        return [str(node) for node in gathered]

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        trainer = self.lightning_module.trainer
        run = run_context(trainer)
        manifest = run.resume_manifest if run.resume_from is not None else None
        loader = trainer.train_dataloader
        cursor = loader.state_dict() if isinstance(loader, Resumable) else None
        emit_receipt(trainer, MembershipReceipt(
            stage_id=run.stage, epoch=self.membership.epoch, change=str(self.change),
            previous_members=self.previous.to_json_dict()["nodes"] if self.previous else {},
            members=self.membership.to_json_dict()["nodes"],
            previous_world_size=self.previous.world_size if self.previous else None,
            world_size=self.membership.world_size,
            settings=launch_settings(),
            checkpoint_manifest_digest=_manifest_digest(run.resume_from) if manifest is not None else None,
            cursor=cursor, steps_replayed=_steps_replayed(run.layout.receipts, manifest.step) if manifest else 0,
        ))  # fmt: skip

    def membership_record(self) -> dict[str, Any] | None:
        """What a checkpoint records of the mesh it was written in."""
        return self.membership.to_json_dict() if self.membership is not None else None


EXIT_ORPHANED = 9
"""A worker whose elastic agent is gone exits by itself with this code (its node has left the mesh)."""


def _exit_with_the_agent() -> None:
    """Exit as soon as this worker's agent dies (torchrun starts workers in their own session, so
    killing the agent alone would leave the worker training on as an orphan)."""
    agent = os.getppid()

    def watch() -> None:
        while os.getppid() == agent:
            time.sleep(0.5)
        os._exit(EXIT_ORPHANED)  # no clean-up: the node is gone; the mesh resumes from its durable checkpoint

    threading.Thread(target=watch, name="lit_psion-agent-watch", daemon=True).start()


def launch_settings() -> dict[str, Any]:
    """What the launcher says about itself: ``mesh launch``'s settings and torchrun's environment."""
    settings = {key: os.environ[key] for key in LAUNCH_SETTINGS_ENV if key in os.environ}
    try:
        settings |= json.loads(os.environ.get(MESH_SETTINGS_ENV, "{}"))
    except ValueError:
        settings["unreadable_settings"] = os.environ[MESH_SETTINGS_ENV]
    return settings


class TransactionalElasticMeshStrategy(Transactional, ElasticMeshStrategy):
    """Transactional steps on a mesh (``transactional_elastic_mesh``): every rank commits or rolls back together."""


def _manifest_digest(checkpoint: Path) -> str:
    return sha256_file(checkpoint / MANIFEST_FILE)


def _steps_replayed(receipts: Path, checkpoint_step: int) -> int:
    """Steps receipted past the resumed checkpoint before this epoch (they are trained again now)."""
    if not receipts.is_file():
        return 0
    last = checkpoint_step
    for line in receipts.read_text(encoding="utf-8").splitlines():
        try:
            receipt = json.loads(line)
        except ValueError:
            continue
        if receipt.get("kind") == "trainer_step":
            last = max(last, int(receipt["body"]["step_out"]))
    return last - checkpoint_step
