"""Seed 000's artifact layout under ``artifacts_root``, written atomically.

    base/base_checkpoint.safetensors   base weights          base/base_meta.json
    sessions/index.json                registry and lineage
    sessions/<id>/meta.json            signature, lineage, the session's settings
    sessions/<id>/plastic_state.safetensors, optim_state.pt (weights_only), metrics.json, update_events.jsonl
    sessions/<id>/runs/<run_id>/per_step.csv, update_events.json, mse_curve.png, receipts.jsonl

Every JSON file is replaced by rename, so a reader never sees a torn file; read-modify-write of
``index.json`` holds an exclusive lock so concurrent writers do not lose each other's entries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import pickle
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from lit_psion.core import atomic_write_bytes, atomic_write_json, read_json, sha256_file, sha256_json
from lit_psion.core.errors import CheckpointError, ConfigError
from lit_psion.sessions.world import WorldConfig

SCHEMA_VERSION = 1
BASE_CHECKPOINT = "base_checkpoint.safetensors"
PLASTIC, OPTIM = "plastic_state.safetensors", "optim_state.pt"
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class SignatureMismatch(CheckpointError):
    """A session (or its files) made for a different model or base checkpoint."""

    failure_class = "signature_mismatch"


def model_signature(config: WorldConfig, base_ckpt_hash: str) -> str:
    """sha256 of the canonical model config and the base checkpoint's digest (SPEC §3)."""
    return sha256_json({"config": dataclasses.asdict(config), "base_ckpt_hash": base_ckpt_hash})


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    atomic_write_bytes(path, save({k: v.detach().contiguous() for k, v in tensors.items()}))


def save_torch(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_torch(path: Path) -> Any:
    """Tensors and plain data only: a pickle that would run code is refused, never executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{str(path)!r} holds something other than tensors and plain data; refusing to "
                              f"load it ({_first_line(error)})") from error  # fmt: skip


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class Store:
    """One artifacts root."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- base ----------------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    def base_meta(self) -> dict[str, Any]:
        path = self.base_dir / "base_meta.json"
        if not path.is_file():
            raise ConfigError(f"no base model in {str(self.root)!r}: run `python -m lit_psion session init-base "
                              f"--artifacts_root {self.root}` first")  # fmt: skip
        return read_json(path)

    def base_config(self) -> WorldConfig:
        return WorldConfig(**self.base_meta()["config"])

    def base_weights(self) -> dict[str, torch.Tensor]:
        """The base checkpoint, after checking it is the one base_meta.json names."""
        meta, path = self.base_meta(), self.base_dir / BASE_CHECKPOINT
        actual = sha256_file(path) if path.is_file() else "missing"
        if actual != meta["base_ckpt_hash"]:
            raise SignatureMismatch(f"base checkpoint {str(path)!r} does not match base_meta.json: expected sha256 "
                                    f"{meta['base_ckpt_hash']}, got {actual}")  # fmt: skip
        return load_file(path)

    def write_base(self, config: WorldConfig, weights: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        save_tensors(self.base_dir / BASE_CHECKPOINT, weights)
        digest = sha256_file(self.base_dir / BASE_CHECKPOINT)
        meta = {"schema_version": SCHEMA_VERSION, "config": dataclasses.asdict(config), "base_ckpt_hash": digest,
                "model_signature": model_signature(config, digest), "created_at": time.time(), **extra}  # fmt: skip
        atomic_write_json(self.base_dir / "base_meta.json", meta)
        return meta

    # -- sessions ------------------------------------------------------------------------------

    def session_dir(self, session_id: str) -> Path:
        if not _SESSION_ID.fullmatch(session_id):
            raise ConfigError(f"session id {session_id!r} is not valid: use letters, digits, '_', '.', '-' "
                              "(up to 64, not starting with punctuation)")  # fmt: skip
        return self.root / "sessions" / session_id

    def session_meta(self, session_id: str) -> dict[str, Any]:
        path = self.session_dir(session_id) / "meta.json"
        if not path.is_file():
            known = ", ".join(sorted(self.index()["sessions"])) or "none yet"
            raise ConfigError(f"no session {session_id!r} in {str(self.root)!r} (sessions: {known})")
        return read_json(path)

    def check_signature(self, meta: dict[str, Any]) -> None:
        """Refuse a session whose signature does not match the base model it would run on."""
        base = self.base_meta()
        expected = model_signature(WorldConfig(**base["config"]), base["base_ckpt_hash"])
        if meta["model_signature"] != expected or meta["base_ckpt_hash"] != base["base_ckpt_hash"]:
            raise SignatureMismatch(
                f"session {meta['session_id']!r} was made for model signature {meta['model_signature'][:16]}... "
                f"but the base in {str(self.root)!r} has {expected[:16]}...: it belongs to a different base model; "
                "create a new session on this base (session new) instead"
            )

    def index(self) -> dict[str, Any]:
        path = self.root / "sessions" / "index.json"
        return read_json(path) if path.is_file() else {"schema_version": SCHEMA_VERSION, "sessions": {}}

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        lock = self.root / "sessions" / ".index.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def register(self, meta: dict[str, Any]) -> None:
        """Write a session's meta.json and its index.json entry."""
        directory = self.session_dir(meta["session_id"])
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(directory / "meta.json", meta)
        with self._index_lock():
            index = self.index()
            index["sessions"][meta["session_id"]] = {
                key: meta.get(key) for key in ("parent_session_id", "root_session_id", "created_at", "mu", "runs")
            }
            atomic_write_json(self.root / "sessions" / "index.json", index)
