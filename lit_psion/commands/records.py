"""What a fit checks before it continues a run: the same model family, and the records a resume rewrites or extends.

Plain checks over the run directory (no Lightning import), called by the CLI once the checkpoint to resume
is verified and before anything is written.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import sys
from pathlib import Path
from typing import Any

from lit_psion.commands.launch import tell_the_launcher, tell_the_launcher_of_a_bug
from lit_psion.core import RunLayout, RunRecord, read_json
from lit_psion.core.audit import audit_record, changed_records
from lit_psion.core.checkpoint import VerifiedCheckpoint
from lit_psion.core.errors import (
    USER_CODE_EXIT,
    CheckpointError,
    ConfigError,
    DataManifestMismatch,
    EvidenceError,
    OtherModelSettings,
    raised_at,
)
from lit_psion.core.files import read_plain
from lit_psion.core.layout import linked
from lit_psion.core.lock import LOCK_FILE
from lit_psion.core.run import RUN_ID_ENV, runs_under


def refuse_without_its_records(layout: RunLayout, verified: VerifiedCheckpoint) -> None:
    """A run continues only with its records: its run.json, and the receipt log holding the head its checkpoint
    recorded (a resume without them would start both afresh, and the checkpoints would name a chain that is gone)."""
    if not layout.run_file.is_file():
        raise EvidenceError(f"run {layout.run_id!r} has checkpoints but no {layout.run_file.name} "
                            f"({str(layout.run_file)!r} is missing); restore it from a backup before continuing the "
                            "run, or start a new run from the checkpoint with --ckpt_path <checkpoint directory>")
    try:
        named = read_json(layout.run_file)
    except (OSError, ValueError, RecursionError):
        named = None  # (said by the checks below, as a record that cannot be read)
    if isinstance(named, dict) and isinstance(named.get("run_id"), str) and named["run_id"] != layout.run_id:
        raise EvidenceError(f"run {layout.run_id!r}: its {layout.run_file.name} names run {named['run_id']!r}; a "
                            "run directory keeps its run id's name, and a resume would keep the other one: rename "
                            "the directory back, or restore run.json from a backup")  # fmt: skip
    try:
        verdict = audit_record(layout, RunRecord.load(layout), against_pointer=False)
    except (OSError, ValueError, TypeError, KeyError):
        verdict = None  # unreadable: said by the checks below
    if verdict is not None and not verdict.ok:  # what doctor fails in run.json, a resume would overwrite
        raise verdict.refusal(layout.run_id, "continuing the run would overwrite it: restore it from a backup "
                             "(`python -m lit_psion doctor RUN_DIR` shows every check)")  # fmt: skip
    # What a resume rewrites must be what was written: config.yaml (unless an earlier attempt trained with it), the
    # data manifest (a corpus's, or a generator's record) and the tokenizer, each against what run.json records.
    # Whether the data itself still matches is the data modules' check, against the checkpoint.
    for verdict in changed_records(layout):
        raise verdict.refusal(layout.run_id, "continuing the run would overwrite it: restore it from a backup "
                              "(`python -m lit_psion doctor RUN_DIR` shows every check), or start a new run from the "
                              "checkpoint with --ckpt_path <checkpoint directory>")  # fmt: skip
    _refuse_unreadable_metrics(layout)
    head = verified.manifest.receipts_head
    if head is not None and not layout.receipts.is_file():
        raise EvidenceError(f"run {layout.run_id!r}: {layout.receipts.name} is missing, but checkpoint "
                            f"{verified.path.name} recorded receipt head {head}; restore the log from a backup "
                            "before continuing the run, or start a new run from the checkpoint with --ckpt_path "
                            "<checkpoint directory>")  # fmt: skip


def _refuse_unreadable_metrics(layout: RunLayout) -> None:
    """A resume keeps metrics.csv's rows up to the checkpoint's step and appends; a file it cannot read by step
    would fail the fit after run.json was rewritten."""
    if (problem := metrics_problem(layout)) is not None:
        raise EvidenceError(f"run {layout.run_id!r}: {layout.metrics.name} cannot be continued ({problem}); restore "
                            "it from a backup, or move it aside (each step's loss is also in the receipts), then "
                            "resume")  # fmt: skip


def metrics_problem(layout: RunLayout) -> str | None:
    """Why the run's metrics.csv cannot be continued by step (a resume's check, and doctor's), or None (also when
    there is none: a run that logged nothing yet)."""
    if not layout.metrics.is_file():
        return "it is not a file" if layout.metrics.exists() or layout.metrics.is_symlink() else None
    try:
        text = layout.metrics.read_text(encoding="utf-8")
        if not text.strip():  # the logger writes its header with its first rows: the rows were cut away
            raise ValueError("it is empty, though a run's logger writes a header with its first rows")
        if not text.endswith("\n"):  # a row cut short by a kill: the resume drops it
            text = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if "step" not in (reader.fieldnames or []):
            raise ValueError("its header has no 'step' column")
        for row in reader:
            int(row["step"])
    except (OSError, UnicodeDecodeError, ValueError, TypeError, csv.Error) as error:
        return str(error)
    return None


def recorded_model_class(layout: RunLayout) -> str | None:
    """The model class the run's config.yaml names (``model.class_path``), or None when it cannot be read."""
    import yaml

    try:
        return str(yaml.safe_load(read_plain(layout.config))["model"]["class_path"])
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None


TOOK_LATEST: list[RunLayout] = []
"""The run ``--ckpt_path last`` took as its root's latest, once it is read (for :func:`other_runs_of_the_root`)."""


def other_runs_of_the_root(error: BaseException, fitting: bool) -> str:
    """For a refusal of the run ``--ckpt_path last`` took because this config is not that run's (other data, another
    model): how to continue or evaluate another run of the same root, which may be the one the config is for."""
    if not TOOK_LATEST or not isinstance(error, DataManifestMismatch | OtherModelSettings):
        return ""
    took = TOOK_LATEST[0]
    others = [run_id for run_id in runs_under(took.root) if run_id != took.run_id]
    if not others:
        return ""
    named = ", ".join(others) if len(others) <= 3 else f"{len(others)} others, the newest {others[-1]}"
    how = f"{RUN_ID_ENV}=<run id> and no --ckpt_path" if fitting else "--ckpt_path <run>/checkpoints/step-NNNNNN"
    return (f" (--ckpt_path last took {took.run_id}, the latest run under {str(took.root)!r}; for another of its runs "
            f"({named}) give {how})")


def refuse_another_family(layout: RunLayout, config: Any, checkpoint: str | None = None,
                          named_by: str | None = None) -> None:  # fmt: skip
    """A fit from a run's checkpoint (``--ckpt_path last``: the latest run under the root; else the ``checkpoint``
    given) is refused, before anything of it is read, when that run trained another model class than this config
    builds (its run.json stays as it is). Before the data's checks: another family's data is another kind of data."""
    recorded = recorded_model_class(layout)
    if recorded is None:
        return  # no readable config.yaml: the checkpoint's own checks decide
    wanted = config.get("model", {}).get("class_path") if hasattr(config.get("model"), "get") else None
    if wanted is None or str(recorded).rsplit(".", 1)[-1] == str(wanted).rsplit(".", 1)[-1]:
        return  # the same class, however its module path was spelled
    if checkpoint is not None:
        raise CheckpointError(f"--ckpt_path {checkpoint!r} is a checkpoint of run {layout.run_id}, which trains "
                              f"{recorded}, but this config builds {wanted}; give a checkpoint of a "
                              f"{str(wanted).rsplit('.', 1)[-1]} run, or that run's own config ({layout.config})")
    if named_by is not None:
        raise CheckpointError(f"{named_by} names run {layout.run_id}, which trains {recorded}, but this config builds "
                              f"{wanted}; continue it with its own config ({layout.config}), or name another run")
    raise OtherModelSettings(f"--ckpt_path last: the latest run under {str(layout.root)!r} ({layout.run_id}) trains "
                          f"{recorded}, but this config builds {wanted}; continue it with its own config "
                          f"({layout.config}), or use another --trainer.default_root_dir")  # fmt: skip


NOT_THE_RUNS_SHAPE = frozenset({"trainer.max_steps", "trainer.max_epochs", "trainer.default_root_dir",
                                "trainer.logger", "trainer.enable_progress_bar", "trainer.enable_model_summary",
                                "trainer.log_every_n_steps"})  # fmt: skip
"""Settings a completed run named again may give otherwise and still be the run's own config (how long, where,
what is shown): any other model, data or trainer setting is another run's."""


def refuse_nothing_to_train(checkpoint: VerifiedCheckpoint, max_steps: Any, resumed: RunLayout | None,
                            changed: tuple[tuple[str, Any, Any], ...] = (), named: bool = False) -> None:  # fmt: skip
    """A fit from a checkpoint already at ``max_steps`` would train nothing (and receipt an end with no start);
    except for the ``resumed`` run's own unfinished end (a kill after its last checkpoint, before its records said
    completed), which such a fit completes. A completed run that ``LIT_PSION_RUN_ID`` names (``named``: a mesh
    re-formed around its last step) ends the command at once, exit 0, when the config is the run's own: one that
    ``changed`` a model, data or trainer setting of the run's config.yaml (but :data:`NOT_THE_RUNS_SHAPE`) is
    refused whichever way the run was named."""
    if resumed is not None and max_steps == checkpoint.step and _status(resumed) != "completed":
        return
    if not (isinstance(max_steps, int) and 0 < max_steps <= checkpoint.step):
        return
    done = f"checkpoint {checkpoint.path.name} of run {checkpoint.manifest.run_id} is already at step {checkpoint.step}"
    if resumed is not None and (other := [c for c in changed if c[0].split(".")[0] in ("model", "data", "trainer")
                                          and c[0] not in NOT_THE_RUNS_SHAPE]):  # fmt: skip
        shown = "; ".join(f"{key}: {before!r} -> {now!r}" for key, before, now in other[:3])
        more = f"; {len(other) - 3} more" if len(other) > 3 else ""
        raise ConfigError(f"{done}, and this config is not the run's own: it sets {shown}{more}; give the run's "
                          f"config ({resumed.config}) to continue it, or train another run")  # fmt: skip
    if named and resumed is not None and _status(resumed) == "completed":
        print(f"lit_psion: run {resumed.run_id} is complete at step {checkpoint.step}", file=sys.stderr)
        raise SystemExit(0)  # nothing left to do, not an error
    raise ConfigError(f"{done}, and --trainer.max_steps is {max_steps}: nothing to train; raise --trainer.max_steps "
                      "to train further")  # fmt: skip


def _status(layout: RunLayout) -> str | None:
    try:
        return read_json(layout.run_file).get("status")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None  # verified by the resume already: unreadable here is a race, not a finished run


def what_remains(layout: RunLayout) -> str:
    """What an interrupted fit of the run at ``layout`` leaves to continue, for its line: its latest durable
    checkpoint, or nothing yet ("" when the fit had not begun its run)."""
    if not layout.run_file.is_file():
        return ""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # (an unreadable record: said as below)
        if (record := read_json(layout.run_file)).get("status") == "completed":  # the error came after (a teardown)
            return (f"; run {layout.run_id} had completed at step {record.get('global_step')} before it (its record "
                    "and receipts are whole): nothing to continue")  # fmt: skip
    if not layout.pointer.is_file():
        return (f"; run {layout.run_id} has no durable checkpoint yet, so there is nothing to continue: start again "
                "without --ckpt_path")  # fmt: skip
    return f"; continue run {layout.run_id} from its latest durable checkpoint with {layout.resume_flags}"


def say_a_bug(what: str, error: BaseException) -> int:
    """The line and exit code (1) of an error no known cause accounts for: a bug of lit_psion's (under ``mesh
    launch``, the launcher is told: a restart does not fix it)."""
    print(f"lit_psion: unexpected error: {what}{raised_at(error)} (set LIT_PSION_DEBUG=1 for the traceback)",
          file=sys.stderr)  # fmt: skip
    tell_the_launcher_of_a_bug(f"{what}{raised_at(error)}")
    return 1


def say_user_code_failed(what: str, error: BaseException, fitting: RunLayout | None) -> int:
    """The line and exit code (``user_code_failed``, 14) of ``error``, raised in code a user plugged in (a callback,
    a model, a data module): where it was raised, and what the run keeps to continue from once it is fixed."""
    line = (f"your code raised {what}{raised_at(error)}; fix it{what_remains(fitting) if fitting else ''} "
            "(set LIT_PSION_DEBUG=1 for the traceback)")  # fmt: skip
    print(f"lit_psion: error: {line}", file=sys.stderr)
    if not isinstance(error, OSError):  # under mesh launch: no restart fixes it (an I/O error may pass: a restart)
        tell_the_launcher(USER_CODE_EXIT, line)
    return USER_CODE_EXIT


def what_the_pause_kept(layout: RunLayout) -> str:
    """For a SIGTERM's line: the step the run paused at and the checkpoint ``--ckpt_path last`` continues from."""
    try:
        step, pointed = read_json(layout.run_file)["global_step"], read_json(layout.pointer)["step"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return what_remains(layout)  # no run yet, or no durable checkpoint
    if step == pointed:
        return f" at step {step}, checkpointed; continue run {layout.run_id} with {layout.resume_flags}"
    return (f" at step {step}; continue run {layout.run_id} with {layout.resume_flags} from its latest durable "
            f"checkpoint, step {pointed} (the steps after it train again)")


def remove_if_unborn(run_dir: Path) -> None:
    """A new run refused before its run.json was written leaves no directory behind (only its lock was there)."""
    if run_dir.is_dir() and not RunLayout.of(run_dir).is_run() and {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}:
        shutil.rmtree(run_dir, ignore_errors=True)


def refuse_a_file_named(layout: RunLayout) -> None:
    """``LIT_PSION_RUN_ID`` naming a file in the runs root (a run directory cannot be made there), or a symlink
    (dangling or not: the run would be written where it points, outside the root)."""
    if layout.run_dir.is_symlink():
        raise ConfigError(f"{RUN_ID_ENV}={layout.run_id!r} names {linked(layout.run_dir, 'a run')}, or give another "
                          "run id")  # fmt: skip
    if layout.run_dir.exists() and not layout.run_dir.is_dir():
        raise ConfigError(f"{RUN_ID_ENV}={layout.run_id!r} names {str(layout.run_dir)!r}, which is a file, not a run "
                          "directory; give the id of a run (or of a new one), or unset it")  # fmt: skip


def record_past_users_on_exception(callbacks: list[Any]) -> None:
    """Let lit_psion's own ``on_exception`` hooks run after a user's callback whose ``on_exception`` raises.

    Lightning calls every callback's ``on_exception`` in turn and stops at the first that raises, and a user's
    callbacks come before lit_psion's: one that failed there left run.json ``active``, the held step receipts
    unwritten and the failure of the fit unreported behind its own. Each such hook is wrapped to say its error
    in one line instead; the fit's own exception then ends the command as it would have.
    """
    for callback in callbacks:
        hook = getattr(type(callback), "on_exception", None)
        if not (_own_code(type(callback)) or hook is None or hook is _base_on_exception()):
            callback.on_exception = _SaysItsError(callback)  # (an instance attribute: Lightning looks it up by name)


class _SaysItsError:
    """A user callback's ``on_exception`` whose own error is said, not raised (picklable, for spawned ranks)."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback

    def __call__(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        try:
            type(self.callback).on_exception(self.callback, trainer, pl_module, exception)
        except (Exception, SystemExit) as error:
            if trainer.is_global_zero:
                print(f"lit_psion: warning: {type(self.callback).__name__}.on_exception raised {type(error).__name__}"
                      f": {' '.join(str(error).split())}{raised_at(error)} while the fit stopped on "
                      f"{type(exception).__name__}; the run's record was written regardless; fix it",
                      file=sys.stderr)  # fmt: skip


def _base_on_exception() -> Any:
    from lightning.pytorch.callbacks import Callback  # (a fit's import: kept off the other commands' start-up)

    return Callback.on_exception


def _own_code(cls: type) -> bool:
    """Whether ``cls`` is lit_psion's (its top-level ``callbacks`` and ``strategies`` load as ``lit_psion.*``)."""
    return cls.__module__.split(".")[0] == "lit_psion"


def changed_data_first(error: BaseException, verified: VerifiedCheckpoint | None) -> DataManifestMismatch | None:
    """A resume's refusal of changed data, where that data failed to prepare first (a file cut below one batch said
    "batch_size 16 is larger than the 15 training samples", and only once that was fixed that the data changed
    since the checkpoint). None where ``error`` is no such failure, or the data cannot say what changed."""
    from lit_psion.commands.fit_args import known_cause
    from lit_psion.core.errors import DataError
    from lit_psion.core.manifest import read_data_manifest

    cause = known_cause(error)
    data = getattr(cause, "data_module", None)
    if verified is None or data is None or not isinstance(cause, DataError) or isinstance(
            cause, DataManifestMismatch):  # fmt: skip
        return None
    try:
        saved, _, digest = read_data_manifest(RunLayout.of(verified.path.parent.parent).data_manifest)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
    if digest != verified.manifest.data_manifest_digest or (change := data.change_before_preparing(saved)) is None:
        return None
    return DataManifestMismatch(f"refusing to load the checkpoint: the {data.data_name} changed since it was written "
                                f"({change}); restore the original data and settings, or start a new run without "
                                f"--ckpt_path (as given, it does not prepare either: {cause})")  # fmt: skip
