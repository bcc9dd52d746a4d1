"""The TrainingRun record kept in ``<root>/<run_id>/run.json`` (SPEC §2, seed 004 vocabulary)."""

from __future__ import annotations

import dataclasses
import enum
import math
import secrets
import time
import typing
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lit_psion.core.checkpoint import CheckpointManifest, RejectedCheckpoint
from lit_psion.core.contracts import STAGES, Staged
from lit_psion.core.errors import CheckpointError, ConfigError, EvidenceError
from lit_psion.core.files import atomic_write_json, read_json
from lit_psion.core.layout import LATEST_FILE, RunLayout, linked


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
    stage: str = "pretrain"
    """What the run is: ``pretrain``, ``finetune``, ``growth``, ``session`` or ``window``."""
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
    def from_json_dict(cls, record: Any) -> RunRecord:
        """The record ``record`` (parsed run.json) describes; keys this version does not know are ignored.

        Raises:
            RunRecordError: ``record`` is not an object, lacks ``run_id``, or holds a field of the wrong type.
        """
        if not isinstance(record, dict):
            raise RunRecordError(f"it holds a JSON {type(record).__name__}, not an object")
        hints = typing.get_type_hints(cls)
        values = {key: value for key, value in record.items() if key in hints}
        if "run_id" not in values:
            raise RunRecordError("it has no 'run_id'")
        for key, value in values.items():
            if key != "status" and not _is_a(value, hints[key]):
                raise RunRecordError(f"its {key!r} is {value!r}, not {_type_name(hints[key])}")
        status = values.get("status", RunStatus.PLANNED)
        if status not in tuple(RunStatus):
            raise RunRecordError(f"its 'status' is {status!r}, not one of {', '.join(RunStatus)}")
        values["status"] = RunStatus(status)
        return cls(**values)

    def save(self, layout: RunLayout | str | Path) -> None:
        layout = layout if isinstance(layout, RunLayout) else RunLayout.of(layout)
        self.updated_at = time.time()
        atomic_write_json(layout.run_file, self.to_json_dict())

    @classmethod
    def load(cls, layout: RunLayout | str | Path) -> RunRecord:
        """The run's ``run.json``.

        Raises:
            RunRecordError: it cannot be read, is not JSON (or nested too deep to parse), or is not a run record
                (exit 5, naming the file and what is wrong with it).
        """
        layout = layout if isinstance(layout, RunLayout) else RunLayout.of(layout)
        path = layout.run_file
        try:
            return cls.from_json_dict(read_json(path))
        except RunRecordError as error:
            problem = str(error)
        except RecursionError:
            problem = "it is nested too deeply to parse"
        except ValueError as error:  # not JSON, not UTF-8
            problem = f"it is not JSON ({_one_line(error)})"
        except OSError as error:
            problem = f"it cannot be read ({error.strerror or error})"
        raise RunRecordError(f"{str(path)!r} is not a valid run record: {problem}; restore it from a backup (the "
                             "run's history is in receipts.jsonl) or start a new run")  # fmt: skip


class RunRecordError(EvidenceError, ValueError):
    """A ``run.json`` that cannot be read as a run record (empty, not JSON, a field of the wrong type): exit 5."""


def _is_a(value: Any, hint: Any) -> bool:
    """Whether the JSON value ``value`` fits the field type ``hint`` (an int is a float; a bool is neither)."""
    allowed = typing.get_args(hint) or (hint,)
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, float):
        return float in allowed and math.isfinite(value)
    if isinstance(value, int):
        return value >= 0 if int in allowed else float in allowed  # counts (global_step, attempts) are never negative
    return isinstance(value, tuple(t for t in allowed if isinstance(t, type)))


def _type_name(hint: Any) -> str:
    names = {type(None): "null", int: "an int >= 0", float: "a finite number", str: "a string"}
    return " or ".join(names.get(t, str(t)) for t in typing.get_args(hint) or (hint,))


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]


def write_latest(root: str | Path, run_id: str) -> None:
    """Point ``root/latest_run.json`` at ``run_id`` (the run that `--ckpt_path last` continues)."""
    atomic_write_json(RunLayout(Path(root), run_id).latest, {"run_id": run_id})


def read_latest(root: str | Path) -> str | None:
    """The run id ``root/latest_run.json`` names (None if there is none); it must name a run inside ``root``."""
    path = RunLayout(Path(root), "").latest
    if path.is_symlink():
        raise CheckpointError(f"{str(path)!r} is a symlink; a runs directory's index is a plain file inside it: "
                              "delete the link (the next fit writes it again) and give --ckpt_path a checkpoint "
                              "directory")  # fmt: skip
    if not path.exists():
        return None
    try:
        run_id = read_json(path)["run_id"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise CheckpointError(f"{str(path)!r} is malformed ({error}); delete it (the next fit writes it again) and "
                              f"give --ckpt_path a checkpoint directory{other_runs(Path(root))}") from error
    if not isinstance(run_id, str) or not run_id or Path(run_id).name != run_id or run_id in (".", ".."):
        raise CheckpointError(f"{str(path)!r} names run {run_id!r}, which is not a run directory inside "
                              f"{str(root)!r}; delete it and give --ckpt_path a checkpoint directory"
                              f"{other_runs(Path(root))}")  # fmt: skip
    if (run_dir := RunLayout(Path(root), run_id).run_dir).is_symlink():  # a resume would write where it points
        raise CheckpointError(linked(run_dir, "a run"))
    return run_id


RUN_ID_ENV = "LIT_PSION_RUN_ID"
"""The run a fit writes, shared by every process of a multi-process launch (``mesh launch`` sets it; a
fit that plans a new run sets it for the worker processes Lightning starts). When it names a run that
has a durable checkpoint, the fit resumes it: what an elastic restart of the same command needs."""


def runs_under(root: Path) -> list[str]:
    """The ids of the runs directly under ``root`` (directories holding a run.json), oldest first by their ids."""
    return sorted(path.parent.name for path in root.glob("*/run.json")) if root.is_dir() else []


def no_run_to_continue(root: Path, subcommand: str | None = "fit") -> CheckpointError | ConfigError:
    """Why ``--ckpt_path last`` finds nothing under ``root``: no run at all, or runs whose index is gone (a new run
    would leave them behind); said for a fit, or for an evaluation (``validate``, ``test``, ``predict``)."""
    runs = runs_under(root)
    if runs:
        return CheckpointError(f"--ckpt_path last: {str(RunLayout(root, '').latest)!r} is missing, so which run to "
                               f"continue cannot be told ({len(runs)} under it, the newest {runs[-1]}); continue one "
                               f"with {RUN_ID_ENV}=<run id> and no --ckpt_path")  # fmt: skip
    if root.exists() and not root.is_dir():  # a bad setting, as it is to a fit without --ckpt_path
        return ConfigError(f"--ckpt_path last: trainer.default_root_dir {str(root)!r} is a file, not a runs "
                           "directory; give the directory your runs are in")  # fmt: skip
    if subcommand not in (None, "fit"):  # "run once without it" would evaluate freshly initialised weights
        return CheckpointError(f"--ckpt_path last: no run to {subcommand} in {str(root)!r}; give "
                               "--trainer.default_root_dir the directory a fit wrote its runs to, or --ckpt_path a "
                               "checkpoint directory")  # fmt: skip
    return CheckpointError(f"--ckpt_path last: no run to continue in {str(root)!r}; run once without it")


def other_runs(root: Path) -> str:
    """How to continue one of the runs under ``root`` when its index cannot say which (empty when there are none)."""
    runs = runs_under(root)
    if not runs:
        return ""
    return (f"; to continue one of its {len(runs)} runs (the newest {runs[-1]}) with fit, give {RUN_ID_ENV}=<run id> "
            "and no --ckpt_path (to evaluate one, give --ckpt_path <run>/checkpoints/step-NNNNNN)")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """Where a fit writes and what it resumes, decided before anything is instantiated.

    The CLI builds one and hands it to :class:`lit_psion.callbacks.RunDirectory`; callbacks and
    strategies read it with :func:`run_context`. A Python-API fit without a RunDirectory gets
    :meth:`for_run_dir` of ``trainer.default_root_dir`` (there, the run directory itself).
    """

    layout: RunLayout
    stage: str = "pretrain"
    resumed: bool = False
    config_yaml: str | None = None
    resume_from: Path | None = None
    """The verified checkpoint the fit resumes from."""
    rejected: tuple[RejectedCheckpoint, ...] = ()
    """Checkpoints skipped while resolving ``--ckpt_path last`` (receipted when training starts)."""
    resume_manifest: CheckpointManifest | None = None
    """The verified manifest of the checkpoint the fit starts from (compared with the run at setup)."""
    resume_manifest_sha256: str | None = None
    """That manifest's digest (what the run's lineage names)."""
    changed_settings: tuple[tuple[str, Any, Any], ...] = ()
    """``(key, before, now)`` for each setting a resume of this run changes (its resumed receipt records them)."""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"a run's stage must be one of {', '.join(STAGES)}, got {self.stage!r}")

    @property
    def resume_receipts_head(self) -> str | None:
        """The receipt head a resumed checkpoint recorded (what a torn-tail repair must still reach)."""
        return self.resume_manifest.receipts_head if self.resumed and self.resume_manifest is not None else None

    @property
    def lineage(self) -> tuple[str, ...]:
        """Where the fit's weights come from: ``checkpoints/step-NNNNNN`` of this run, ``run:<id>/step-NNNNNN`` of
        another that holds it and its receipts (the checkpoint was held to them), else the checkpoint's absolute path
        (its manifest's run was not there to vouch for it: a copy outside its run, or a run that lost its log), with
        ``@sha256:<manifest digest>`` when the checkpoint was verified."""
        if self.resume_from is None:
            return ()
        manifest = self.resume_manifest
        if manifest is None or manifest.run_id == self.layout.run_id:
            where = self.layout.relative(self.resume_from)
        else:
            source = Path(self.resume_from).resolve()
            home = RunLayout.of(source.parent.parent)
            held = (home.is_run() and home.run_id == manifest.run_id and home.receipts.is_file()
                    and source.parent == home.checkpoints.resolve())  # fmt: skip
            where = f"run:{manifest.run_id}/{source.name}" if held else str(source)
        return (f"{where}@sha256:{self.resume_manifest_sha256}" if self.resume_manifest_sha256 else where,)

    @classmethod
    def for_run_dir(cls, run_dir: str | Path, stage: str = "pretrain") -> RunContext:
        return cls(layout=RunLayout.of(run_dir), stage=stage)


@runtime_checkable
class RunContextHolder(Protocol):
    """What carries a fit's RunContext among the trainer's callbacks (``RunDirectory``)."""

    run_context: RunContext


def run_context(trainer: Any) -> RunContext:
    """The fit's RunContext: the one its RunDirectory holds, else one for ``trainer.default_root_dir``."""
    for callback in trainer.callbacks:  # getattr, not isinstance(RunContextHolder): a protocol check costs ~20 us
        context = getattr(callback, "run_context", None)
        if isinstance(context, RunContext):
            return context
    return RunContext.for_run_dir(trainer.default_root_dir, run_stage(trainer.lightning_module, trainer.callbacks))


def run_stage(model: Any, callbacks: list[Any]) -> str:
    """The stage of a run: a callback's declared stage (growth) wins over the model's (finetune); else pretrain."""
    declared = [c.stage for c in callbacks if isinstance(c, Staged) and c.stage in STAGES]
    if declared:
        return declared[0]
    return model.stage if isinstance(model, Staged) and model.stage in STAGES else "pretrain"


def plain_run_id(run_id: str) -> str:
    """``run_id`` if it can name a run directory (exit 2 otherwise)."""
    plain = run_id and Path(run_id).name == run_id and run_id not in (".", "..") and run_id.isprintable()
    if not plain or run_id.startswith((".", "-")) or len(run_id.encode()) > MAX_RUN_ID_BYTES or run_id == LATEST_FILE \
            or run_id != run_id.strip():  # (" " named a directory no listing shows, nor a pasted command keeps)
        raise ConfigError(f"{RUN_ID_ENV}={run_id[:80]!r} is not a run id (a plain directory name inside the runs root, "
                          f"at most {MAX_RUN_ID_BYTES} bytes, not starting with '.', '-' or a space, not ending with a "
                          f"space, not {LATEST_FILE})")
    return run_id


MAX_RUN_ID_BYTES = 128
"""A run id is a directory name (and part of lock and temporary file names): well under the file system's 255."""
