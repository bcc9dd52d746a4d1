"""Seed 000's artifact layout under ``artifacts_root``, written atomically.

    base/base_checkpoint.safetensors   base weights          base/base_meta.json
    sessions/index.json                registry and lineage
    sessions/<id>/meta.json            signature, lineage, the session's settings
    sessions/<id>/plastic_state.safetensors, optim_state.pt (weights_only), metrics.json, update_events.jsonl
    sessions/<id>/runs/<run_id>/per_step.csv, update_events.json, mse_curve.png, receipts.jsonl, session_run.json

Every session artifact's sha256 is recorded in its ``meta.json`` (``artifacts``) when it is written and checked, on
the very bytes then loaded, before it is used; a plastic or optimizer state that is not finite is refused. A session's
files change only under its :class:`~lit_psion.core.lock.RunLock` (``sessions/<id>/.lock``), and only through
:meth:`Store.commit`: new files are staged in ``.pending-*``, ``meta.json`` naming their digests is the commit point,
then they are renamed into place, so a crash at any point leaves the old or the new state (:meth:`Store.recover`
finishes or drops an interrupted commit). Every JSON file is replaced by rename, so a reader never sees a torn file;
read-modify-write of ``index.json`` holds an exclusive lock so concurrent writers do not lose each other's entries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import os
import pickle
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_psion.core import atomic_write_bytes, atomic_write_json, read_json, sha256_bytes, sha256_file, sha256_json
from lit_psion.core.errors import CheckpointError, ConfigError, EvidenceError, load_refusal
from lit_psion.core.files import fsync_path
from lit_psion.core.lock import RunLock
from lit_psion.core.text import shell_words
from lit_psion.sessions.registry import refuse_an_unusable_registry, registry_problem
from lit_psion.sessions.settings import WorldConfig

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION = 2
"""2: meta.json records every artifact's sha256 (``artifacts``)."""
BASE_CHECKPOINT = "base_checkpoint.safetensors"
PLASTIC, OPTIM = "plastic_state.safetensors", "optim_state.pt"
METRICS, EVENTS = "metrics.json", "update_events.jsonl"
_PENDING = ".pending-"
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
INDEX = "index.json"
"""The registry beside the sessions' directories in ``sessions/``: no session may take its name."""


class SignatureMismatch(CheckpointError):
    """A session (or its files) made for a different model or base checkpoint."""

    failure_class = "signature_mismatch"


SETTINGS = ("lr", "momentum", "ns_steps", "chunk", "buffer_len", "gate_chunks", "rollback_tol", "grad_norm_max",
            "state_norm_max")  # fmt: skip
"""What ``session new`` records under ``settings`` (a session made before the promotion gate has no gate_chunks)."""
INT_SETTINGS = ("ns_steps", "chunk", "buffer_len", "gate_chunks")
"""A session's settings that are counts; the others (lr, momentum, the policy's limits) are numbers."""
OPTIONAL_SETTINGS = ("grad_norm_max", "state_norm_max", "rollback_tol")
"""Settings that may be null (no limit)."""
COUNTS_FROM = {"gate_chunks": 0}
"""The counts that may be 0 (no promotion gate); every other count is at least 1, every number >= 0 (the rest of
what ``session new`` checks, ``commands.settings_problem``, is checked by ``session run`` and ``verify``)."""
MU_MAX = 1e6
"""The largest drift ``mu`` a session takes: past about 1e38 the float32 dynamics overflow and the solver crashes."""


def _session_record_problem(meta: dict[str, Any]) -> str | None:
    """What makes a session's meta.json not one this version runs, or None: its schema, or a field of the wrong
    kind (a hand edit the digests of its artifacts do not cover)."""
    if meta.get("schema_version") != SCHEMA_VERSION:
        return f"schema_version is {meta.get('schema_version')!r}, this version reads {SCHEMA_VERSION}"
    text = {"session_id": meta["session_id"], "model_signature": meta["model_signature"],
            "base_ckpt_hash": meta["base_ckpt_hash"]}  # fmt: skip
    if bad := next((key for key, value in text.items() if not isinstance(value, str)), None):
        return f"{bad} is {meta[bad]!r}, not a string"
    if bad := next((key for key in ("parent_session_id", "root_session_id") if meta.get(key) is not None
                    and not (isinstance(meta[key], str) and _SESSION_ID.fullmatch(meta[key]))), None):  # fmt: skip
        return f"{bad} is {meta[bad]!r}, not a session id or null"
    artifacts = meta.get("artifacts", {})
    if not isinstance(artifacts, dict) or not all(isinstance(v, str) for v in artifacts.values()):
        return f"artifacts is {artifacts!r}, not file name -> sha256"
    if not isinstance(meta["runs"], list) or not all(isinstance(run, dict) for run in meta["runs"]):
        return f"runs is {meta['runs']!r}, not a list of run records"
    if bad := next((run["files"] for run in meta["runs"] if not isinstance(run.get("files"), dict | None)), None):
        return f"a run's files is {bad!r}, not file name -> sha256"
    names = [*artifacts, *(run.get("run_id") for run in meta["runs"]),
             *(name for run in meta["runs"] for name in (run.get("files") or {}))]  # fmt: skip
    if bad_names := [name for name in names if not is_plain_name(name)]:  # ("", None: falsy, and let through)
        return f"it names the file or run {bad_names[0]!r}, which is not a plain name inside the session"
    if isinstance(meta.get("mu"), bool) or not isinstance(meta.get("mu"), int | float):
        return f"mu is {meta.get('mu')!r}, not a number"
    if not 0 <= meta["mu"] <= MU_MAX:  # (NaN fails too) a larger drift overflows the float32 dynamics
        return f"mu is {meta['mu']!r}, not a drift size in [0, {MU_MAX:g}]"
    settings = meta["settings"]
    if not isinstance(settings, dict):
        return f"settings is {settings!r}, not an object"
    if unknown := sorted(str(key) for key in settings if key not in SETTINGS):  # a setting no run would read
        return f"settings.{unknown[0]} is not a session setting (session new records {', '.join(SETTINGS)})"
    for key, value in settings.items():
        whole = key in INT_SETTINGS
        if value is None and key in OPTIONAL_SETTINGS:
            continue
        if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
            return f"settings.{key} is {value!r}, not {'an integer' if whole else 'a number'}"
        if value != value or value < (COUNTS_FROM.get(key, 1) if whole else 0):  # NaN, or below what can run
            return f"settings.{key} is {value!r}, out of its range (session new refuses it)"
    return None


def is_plain_name(name: Any) -> bool:
    """Whether ``name`` is one file or directory name (no separator, not ``.`` or ``..``): a record that names a path
    would have the session read, or write, outside itself."""
    return isinstance(name, str) and _SESSION_ID.fullmatch(name) is not None


def _record(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A session store's JSON record, or one line naming what is wrong with it (exit 5)."""
    try:
        record = read_json(path)
    except (OSError, ValueError, RecursionError) as error:
        raise EvidenceError(f"{str(path)!r} cannot be read ({type(error).__name__}: {error}); restore it from a "
                            "backup") from error  # fmt: skip
    missing = [key for key in keys if key not in record] if isinstance(record, dict) else list(keys)
    if missing:
        what = f"no {missing[0]!r}" if isinstance(record, dict) else f"a JSON {type(record).__name__}, not an object"
        raise EvidenceError(f"{str(path)!r} is not the record it should be ({what}); restore it from a backup")
    return record


def model_signature(config: WorldConfig, base_ckpt_hash: str) -> str:
    """sha256 of the canonical model config and the base checkpoint's digest (SPEC §3)."""
    return sha256_json({"config": dataclasses.asdict(config), "base_ckpt_hash": base_ckpt_hash})


def tensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """``tensors`` as safetensors bytes."""
    from safetensors.torch import save

    return save({k: v.detach().contiguous() for k, v in tensors.items()})


def _load_tensors(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)


def torch_bytes(obj: Any) -> bytes:
    """``obj`` (tensors and plain data) as ``torch.save`` bytes."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def load_torch(data: bytes, path: Path) -> Any:
    """Tensors and plain data only: a pickle that would run code is refused, never executed."""
    import torch

    buffer = io.BytesIO(data)
    try:
        return torch.load(buffer, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{str(path)!r} holds something other than tensors and plain data; refusing to "
                              f"load it ({load_refusal(error)})") from error  # fmt: skip


def require_finite(state: Any, path: Path) -> None:
    """Refuse ``state`` (tensors, nested in plain data) if a floating-point value in it is NaN or infinite."""
    import torch

    bad = [f"{name} ({count} of {tensor.numel()})" for name, tensor in _named_tensors(state)
           if tensor.is_floating_point() and (count := int((~torch.isfinite(tensor)).sum()))]  # fmt: skip
    if bad:
        raise CheckpointError(f"{str(path)!r} holds non-finite values: {', '.join(bad)}; refusing to use it "
                              "(create or fork a session with a finite state)")  # fmt: skip


def _named_tensors(obj: Any, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    import torch

    if isinstance(obj, torch.Tensor):
        yield name or "tensor", obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _named_tensors(value, f"{name}.{key}" if name else str(key))
    elif isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            yield from _named_tensors(value, f"{name}[{index}]")


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
            if sessions := sorted(meta.parent.name for meta in (self.root / "sessions").glob("*/meta.json")):
                raise ConfigError(f"no base model in {str(self.root)!r}, though {len(sessions)} session(s) were made "
                                  f"for one ({', '.join(sessions[:3])}): restore {str(self.base_dir)!r} from a backup "
                                  "(a new init-base makes another base, which they refuse)")  # fmt: skip
            raise ConfigError(f"no base model in {str(self.root)!r}: run `python -m lit_psion session init-base "
                              f"--artifacts_root {shell_words(self.root)}` first")  # fmt: skip
        meta = _record(path, ("config", "base_ckpt_hash", "model_signature"))
        try:
            signature = model_signature(WorldConfig(**meta["config"]), meta["base_ckpt_hash"])
        except (TypeError, ValueError) as error:
            raise EvidenceError(f"{str(path)!r} is not the record it should be (its config: {error}); restore it from "
                                "a backup") from error  # fmt: skip
        if signature != meta["model_signature"]:  # its own fields disagree: one was edited
            raise EvidenceError(f"{str(path)!r} does not hold together: its model_signature is not the one its config "
                                "and base_ckpt_hash give (one of them was edited); restore it from a backup, or make "
                                "a new base in a new --artifacts_root")  # fmt: skip
        return meta

    def base_config(self) -> WorldConfig:
        return WorldConfig(**self.base_meta()["config"])

    def base_checkpoint(self) -> bytes:
        """The base checkpoint's bytes, after checking they are the ones base_meta.json names."""
        meta, path = self.base_meta(), self.base_dir / BASE_CHECKPOINT
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        actual = sha256_bytes(data) if data is not None else "a symbolic link" if path.is_symlink() else "missing"
        if data is None or actual != meta["base_ckpt_hash"]:
            raise SignatureMismatch(f"base checkpoint {str(path)!r} does not match base_meta.json: expected sha256 "
                                    f"{meta['base_ckpt_hash']}, got {actual}")  # fmt: skip
        return data

    def base_weights(self) -> dict[str, torch.Tensor]:
        """The base checkpoint, after checking it is the one base_meta.json names and that it is finite."""
        weights = _load_tensors(self.base_checkpoint())  # the bytes that were hashed
        require_finite(weights, self.base_dir / BASE_CHECKPOINT)
        return weights

    def write_base(self, config: WorldConfig, weights: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict:
        """Write base/ (call holding :meth:`lock` on :attr:`base_dir`)."""
        data = tensors_bytes(weights)
        atomic_write_bytes(self.base_dir / BASE_CHECKPOINT, data)
        digest = sha256_bytes(data)
        meta = {"schema_version": SCHEMA_VERSION, "config": dataclasses.asdict(config), "base_ckpt_hash": digest,
                "model_signature": model_signature(config, digest), "created_at": time.time(), **extra}  # fmt: skip
        atomic_write_json(self.base_dir / "base_meta.json", meta)
        return meta

    def lock(self, directory: Path, purpose: str) -> RunLock:
        """The lock on ``directory`` (a session's, or :attr:`base_dir`), created if need be; hold it to write there."""
        directory.mkdir(parents=True, exist_ok=True)
        return RunLock(directory, purpose=purpose)

    def creating(self, session_id: str, purpose: str) -> contextlib.AbstractContextManager[Path]:
        """The lock on a session about to be made; a refusal before its meta.json leaves no directory behind."""
        return self.making(self.session_dir(session_id), "meta.json", purpose)

    @contextlib.contextmanager
    def making(self, directory: Path, record: str, purpose: str) -> Iterator[Path]:
        """The lock on ``directory``, about to be made: a refusal, failure or Ctrl-C before its ``record`` is
        written leaves neither it nor the artifacts root, where this made them (init-base left a lone lock)."""
        existed, root_existed = directory.exists(), self.root.exists()
        with self.lock(directory, purpose):
            try:
                yield directory
            except BaseException:
                if not existed and not (directory / record).exists():
                    shutil.rmtree(directory, ignore_errors=True)
                    if not root_existed:
                        with contextlib.suppress(OSError):
                            self.root.rmdir()  # (only while empty)
                raise

    # -- sessions ------------------------------------------------------------------------------

    def session_dir(self, session_id: str) -> Path:
        if not _SESSION_ID.fullmatch(session_id):
            raise ConfigError(f"session id {session_id!r} is not valid: use letters, digits, '_', '.', '-' "
                              "(up to 64, not starting with punctuation)")  # fmt: skip
        if session_id == INDEX:
            raise ConfigError(f"session id {session_id!r} is the name of the sessions' registry; pick another")
        return self.root / "sessions" / session_id

    def session_meta(self, session_id: str) -> dict[str, Any]:
        path = self.session_dir(session_id) / "meta.json"
        if not path.is_file():
            registered = self.index()["sessions"]
            if session_id in registered:
                what = ("its directory is gone" if not path.parent.is_dir() else "its meta.json is missing" if not (
                    path.exists() or path.is_symlink()) else "its meta.json is not a file")  # fmt: skip
                raise EvidenceError(f"session {session_id!r} is registered in {str(self.root)!r}, but {what} "
                                    f"({str(path)!r}); restore it from a backup")  # fmt: skip
            known = ", ".join(sorted(registered)) or "none yet"
            raise ConfigError(f"no session {session_id!r} in {str(self.root)!r} (sessions: {known})")
        meta = _record(path, ("session_id", "model_signature", "base_ckpt_hash", "settings", "runs"))
        if (problem := _session_record_problem(meta)) is not None:
            raise EvidenceError(f"{str(path)!r} is not a session record: {problem}; restore it from a backup, or "
                                "create the session again")  # fmt: skip
        if meta["session_id"] != session_id:  # a copy would write its files into the session it names
            raise EvidenceError(f"{str(path)!r} is session {meta['session_id']!r}'s record, not {session_id!r}'s: "
                                f"the directory was copied or renamed; rename it back, or make a new session from "
                                f"{meta['session_id']!r} with session fork")  # fmt: skip
        return meta

    def check_signature(self, meta: dict[str, Any]) -> None:
        """Refuse a session whose signature does not match the base model it would run on."""
        base = self.base_meta()
        expected = model_signature(WorldConfig(**base["config"]), base["base_ckpt_hash"])
        if meta["model_signature"] != expected or meta["base_ckpt_hash"] != base["base_ckpt_hash"]:
            checkpoint = self.base_dir / BASE_CHECKPOINT
            if checkpoint.is_file() and sha256_file(checkpoint) == meta["base_ckpt_hash"]:  # the base is this one's
                raise EvidenceError(f"{str(self.base_dir / 'base_meta.json')!r} records base checkpoint sha256 "
                                    f"{base['base_ckpt_hash'][:16]}..., but {str(checkpoint)!r} is the one session "
                                    f"{meta['session_id']!r} was made for ({meta['base_ckpt_hash'][:16]}...): "
                                    "base_meta.json was edited; restore it from a backup")  # fmt: skip
            raise SignatureMismatch(
                f"session {meta['session_id']!r} was made for model signature {meta['model_signature'][:16]}... "
                f"but the base in {str(self.root)!r} has {expected[:16]}...: it belongs to a different base model; "
                "create a new session on this base (session new) instead"
            )

    # -- session artifacts: digest-recorded, checked before use, committed through meta.json ---

    def read_artifact(self, meta: dict[str, Any], name: str, optional: bool = False) -> bytes | None:
        """The bytes of a session artifact, after checking them against the sha256 ``meta.json`` records.

        Args:
            meta: The session's meta.json.
            name: The artifact's file name (``PLASTIC``, ``OPTIM``, ``EVENTS``, ...).
            optional: Return None for an artifact neither recorded nor present (not written yet).

        Raises:
            CheckpointError: no digest recorded for a state (``PLASTIC``, ``OPTIM``), or its bytes do not match the
                digest (exit 4).
            EvidenceError: the same for a record (the update log, the metrics; exit 5, as ``session verify`` says).
        """
        path = self.session_dir(meta["session_id"]) / name
        expected = (meta.get("artifacts") or {}).get(name)
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        refusal = CheckpointError if name in (PLASTIC, OPTIM) else EvidenceError
        if expected is None:
            if optional and data is None:
                return None
            raise refusal(f"meta.json of session {meta['session_id']!r} records no sha256 for {str(path)!r}, "
                                  "so it cannot be checked (an edited meta.json, or a session from before artifact "
                                  "digests): create the session again")  # fmt: skip
        actual = sha256_bytes(data) if data is not None else "a symbolic link" if path.is_symlink() else "missing"
        if actual != expected:
            raise refusal(f"session artifact {str(path)!r} does not match its meta.json: expected sha256 "
                                  f"{expected}, got {actual}")  # fmt: skip
        return data

    def plastic_state(self, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The session's plastic weights, checked (digest, finiteness, and every tensor's name and shape against the
        base model's) on the bytes loaded."""
        from lit_psion.sessions.state_checks import plastic_problem

        path = self.session_dir(meta["session_id"]) / PLASTIC
        tensors = _load_tensors(self.read_artifact(meta, PLASTIC))
        require_finite(tensors, path)
        if (problem := plastic_problem(tensors, self.base_config())) is not None:
            raise CheckpointError(f"session state {str(path)!r} {problem}: restore it from a backup, or fork the "
                                  "session again")  # fmt: skip
        return tensors

    def optimizer_state(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The session's optimizer state (``{}``: a fresh optimizer), checked like :meth:`plastic_state` (its
        structure: Muon's param groups and settings, a state per parameter of its shape)."""
        from lit_psion.sessions.state_checks import optimizer_problem

        path = self.session_dir(meta["session_id"]) / OPTIM
        state = load_torch(self.read_artifact(meta, OPTIM), path)
        require_finite(state, path)
        if (problem := optimizer_problem(state, self.base_config())) is not None:
            raise CheckpointError(f"optimizer state {str(path)!r} {problem}: restore it from a backup, or fork the "
                                  "session again with --reset_optimizer 1")  # fmt: skip
        return state

    def commit(self, meta: dict[str, Any], files: dict[str, bytes]) -> dict[str, Any]:
        """Write ``files`` into the session and ``meta`` (their digests added) as one change; return that meta.

        The files are staged in ``.pending-*``; writing meta.json (and index.json) is the commit point;
        then they are renamed into place. Call holding the session's :meth:`lock`.
        """
        directory = self.session_dir(meta["session_id"])
        staging = directory / f"{_PENDING}{uuid.uuid4().hex[:12]}"
        for name, data in files.items():
            atomic_write_bytes(staging / name, data)
        digests = {name: sha256_bytes(data) for name, data in files.items()}
        meta = {**meta, "schema_version": SCHEMA_VERSION, "artifacts": {**(meta.get("artifacts") or {}), **digests}}
        self.register(meta)
        self._install(staging)
        return meta

    def recover(self, session_id: str) -> None:
        """Finish a commit that meta.json names but a crash interrupted, or drop one it never reached.

        Call holding the session's :meth:`lock`, before reading its artifacts.
        """
        directory = self.session_dir(session_id)
        meta_path = directory / "meta.json"
        recorded = (read_json(meta_path).get("artifacts") or {}) if meta_path.is_file() else {}
        for staging in sorted(directory.glob(f"{_PENDING}*")):
            if staging.is_symlink() or not staging.is_dir() or any(
                    p.is_symlink() or not p.is_file() for p in staging.iterdir() if not p.name.startswith(".")):
                raise EvidenceError(f"{str(staging)!r} is not a commit this session staged (a file, a link, or a "
                                    "directory holding more than files): move it out of the session directory, then "
                                    "run the command again")  # fmt: skip
            staged = {p.name: sha256_bytes(p.read_bytes()) for p in staging.iterdir() if not p.name.startswith(".")}
            if staged and all(recorded.get(name) == digest for name, digest in staged.items()):
                self._install(staging)  # committed: meta.json names these files
            else:
                shutil.rmtree(staging)  # never committed
        if meta_path.is_file():  # a kill between meta.json and index.json left the registry's entry behind
            meta = {**read_json(meta_path), "session_id": session_id}
            if (problem := self.registry_problem(meta)) is not None:  # (the entry would be rewritten to hide it)
                raise EvidenceError(problem)
            self._index_entry(meta)
        for leftover in directory.glob(".*.tmp"):  # an atomic write killed before its rename: the old file stands
            if leftover.is_file() and not leftover.is_symlink():
                leftover.unlink()

    def pending_commit(self, session_id: str) -> dict[str, Path]:
        """The files of a commit meta.json names but a crash left staged (what :meth:`recover` installs), by name;
        empty when there is none."""
        directory = self.session_dir(session_id)
        meta_path = directory / "meta.json"
        recorded = (read_json(meta_path).get("artifacts") or {}) if meta_path.is_file() else {}
        for staging in sorted(directory.glob(f"{_PENDING}*")):
            files = {p.name: p for p in staging.iterdir() if not p.name.startswith(".") and p.is_file()} \
                if staging.is_dir() and not staging.is_symlink() else {}
            if files and all(recorded.get(name) == sha256_file(path) for name, path in files.items()):
                return files
        return {}

    @staticmethod
    def _install(staging: Path) -> None:
        for path in sorted(staging.iterdir()):
            if not path.name.startswith("."):  # an atomic write's leftover temp file
                os.replace(path, staging.parent / path.name)
        fsync_path(staging.parent)
        shutil.rmtree(staging)

    def index(self) -> dict[str, Any]:
        path = self.root / "sessions" / INDEX
        refuse_an_unusable_registry(path, path.with_name(".index.lock"))
        if not path.is_file():
            return {"schema_version": SCHEMA_VERSION, "sessions": {}}
        index = _record(path, ("sessions",))
        if not isinstance(index["sessions"], dict):
            raise EvidenceError(f"{str(path)!r} is not a sessions registry ('sessions' is not an object); restore it "
                                "from a backup")  # fmt: skip
        return index

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
        directory, _ = self.session_dir(meta["session_id"]), self.index()  # (a registry it could not update: refused)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(directory / "meta.json", meta)
        self._index_entry(meta)

    def registry_problem(self, meta: dict[str, Any]) -> str | None:
        """Why ``meta`` is not what its index.json entry registered (runs rolled back, lineage edited), or None."""
        return registry_problem(meta, self.index()["sessions"].get(meta["session_id"]))

    def _index_entry(self, meta: dict[str, Any]) -> None:
        """Make the session's index.json entry the one its meta.json implies (written only when it differs)."""
        entry = {key: meta.get(key) for key in ("parent_session_id", "root_session_id", "created_at", "mu", "runs")}
        with self._index_lock():
            index = self.index()
            if index["sessions"].get(meta["session_id"]) != entry:
                index["sessions"][meta["session_id"]] = entry
                atomic_write_json(self.root / "sessions" / INDEX, index)
