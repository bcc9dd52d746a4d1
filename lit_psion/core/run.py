"""The TrainingRun record kept in ``<root>/<run_id>/run.json`` (SPEC §2, seed 004 vocabulary)."""

from __future__ import annotations

import dataclasses
import enum
import secrets
import time
from pathlib import Path
from typing import Any

from lit_psion.core.files import atomic_write_json, read_json

RUN_FILE = "run.json"
LATEST_FILE = "latest_run.json"


class RunStatus(enum.StrEnum):
    PLANNED = "planned"
    INITIALIZING = "initializing"
    ACTIVE = "active"
    RECOVERING = "recovering"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"


def new_run_id() -> str:
    """A sortable, collision-resistant run id: UTC time plus 6 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclasses.dataclass(kw_only=True)
class RunRecord:
    """What run.json says about a run. Status is first-class state, never inferred from logs."""

    run_id: str
    status: RunStatus = RunStatus.PLANNED
    created_at: float = dataclasses.field(default_factory=time.time)
    updated_at: float = dataclasses.field(default_factory=time.time)
    config_digest: str | None = None
    data_manifest_digest: str | None = None
    model_signature: str | None = None
    code_version: str | None = None
    global_step: int = 0
    receipts_head: str | None = None
    """Digest of the newest receipt when run.json was last written (catches a truncated receipts.jsonl)."""
    attempts: int = 0
    failure: str | None = None
    failure_class: str | None = None
    """Why a failed run failed, one of the classes in docs/cli.md (``checkpoint_flush_failed``, ...)."""

    def to_json_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["status"] = str(self.status)
        return record

    @classmethod
    def from_json_dict(cls, record: dict[str, Any]) -> RunRecord:
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in record.items() if key in known}
        values["status"] = RunStatus(values.get("status", RunStatus.PLANNED))
        return cls(**values)

    def save(self, run_dir: str | Path) -> None:
        self.updated_at = time.time()
        atomic_write_json(Path(run_dir) / RUN_FILE, self.to_json_dict())

    @classmethod
    def load(cls, run_dir: str | Path) -> RunRecord:
        return cls.from_json_dict(read_json(Path(run_dir) / RUN_FILE))


def write_latest(root: str | Path, run_id: str) -> None:
    """Point ``root/latest_run.json`` at ``run_id`` (the run that `--ckpt_path last` continues)."""
    atomic_write_json(Path(root) / LATEST_FILE, {"run_id": run_id})


def read_latest(root: str | Path) -> str | None:
    path = Path(root) / LATEST_FILE
    if not path.exists():
        return None
    return str(read_json(path)["run_id"])
