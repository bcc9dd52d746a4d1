"""A window program on disk: its settings, revisions, pointer, and each window's plan, state and receipts.

    <root>/program.json            the settings every window is planned from (data, LoRA, budget, policies)
    <root>/tokenizer.json          the base run's tokenizer: every party tokenizes with it
    <root>/revisions/base/         revision 0: the verified base, copied as a checkpoint directory
    <root>/pointer.json            the current input revision (manifest sha256 + checkpoint directory)
    <root>/windows/w-NNNN/         plan.json, window.json (state), contributions/<assignment>/,
                                   dispositions.json, aggregate/, promotion.json, receipts.jsonl

A revision is a checkpoint directory (``model.safetensors`` + ``trainer_state.pt`` +
``manifest.json``); its id is the sha256 of its manifest, so every load verifies every byte.
Only the coordinator writes ``window.json``, the receipts and the pointer, under the window's
lock; contributors only add their own ``contributions/<assignment>/`` directory, by rename.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lit_psion.core import atomic_write_json, read_json, sha256_bytes, sha256_json
from lit_psion.core.checkpoint import VerifiedCheckpoint, verify_checkpoint
from lit_psion.core.errors import CheckpointError, ConfigError, DataError, EvidenceError
from lit_psion.core.layout import POINTER_FILE, PROMOTION_FILE, RECEIPTS_FILE, TOKENIZER_FILE
from lit_psion.core.receipt_log import ReceiptLog
from lit_psion.core.receipts import ReceiptBody, WindowStateReceipt
from lit_psion.core.text import shell_words
from lit_psion.core.windows import (
    PLANNED,
    RECONCILED,
    REPLAY_REQUIRED,
    WINDOW_ID,
    DataSlice,
    ValidatorPolicy,
    WindowPlan,
    WindowStateError,
    advance,
    plan_assignments,
)
from lit_psion.windows.settings import ProgramSettings

FORMAT_VERSION = 1
PROGRAM, PLAN, STATE, DISPOSITIONS = "program.json", "plan.json", "window.json", "dispositions.json"
POINTER, TOKENIZER, PROMOTION = POINTER_FILE, TOKENIZER_FILE, PROMOTION_FILE  # the names a run uses for the same
ADAPTER, CONTRIBUTION = "adapter.safetensors", "contribution.json"  # a contribution directory's two files
BASE_REVISION = "revisions/base"
SLICE_SEED = 1337
"""The permutation slices are cut from, unless ``data.seed`` sets it (the corpus' own seed default)."""


def record(path: Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A program record (a JSON object holding ``keys``), or an EvidenceError naming it (exit 5): a missing,
    truncated or edited record is reported in one line, never as a crash."""
    try:
        value = read_json(path)
    except FileNotFoundError as error:
        raise EvidenceError(f"{str(path)!r} is missing; the program's records are incomplete") from error
    except (OSError, ValueError, RecursionError) as error:
        raise EvidenceError(
            f"{str(path)!r} cannot be read ({type(error).__name__}); it was damaged or edited"
        ) from error
    if not isinstance(value, dict) or any(key not in value for key in keys):
        raise EvidenceError(f"{str(path)!r} is not the record it should be (fields {', '.join(keys)}); it was edited")
    return value


class Program:
    """The window program under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- layout -------------------------------------------------------------------------

    @property
    def settings_path(self) -> Path:
        return self.root / PROGRAM

    def window_dir(self, window_id: str) -> Path:
        """The window's directory; ``windows/`` or it a symlink is exit 5 (every command reads it before writing)."""
        path = self.root / "windows" / window_id
        if linked := next((part for part in (path.parent, path) if part.is_symlink()), None):
            raise EvidenceError(f"{str(linked)!r} is a symlink; the program's directories are its own: put the "
                                "directory itself there")  # fmt: skip
        return path

    def window_ids(self) -> list[str]:
        windows = self.root / "windows"
        if not windows.is_dir():
            return []
        names = sorted(p.name for p in windows.iterdir() if WINDOW_ID.fullmatch(p.name))
        committed = [name for name in names if (windows / name / STATE).is_file()]
        # A window directory without window.json never finished planning (window.json is its commit point): only
        # the one after the last window may be such, and only while it holds no more than planning writes.
        for number, name in enumerate(committed, start=1):
            if name != f"w-{number:04d}":
                raise EvidenceError(f"window w-{number:04d} is missing from {str(windows)!r} but {name} follows it; "
                                    "restore it from a backup")  # fmt: skip
        following = f"w-{len(committed) + 1:04d}"
        for name in names:
            if name not in committed and name > following:
                raise EvidenceError(f"window {name} is in {str(windows)!r}, but the next window is {following}: "
                                    f"restore the windows before it from a backup, or remove {name}")  # fmt: skip
            if name not in committed and not _planning_cut_short(windows / name):
                raise EvidenceError(f"{str(windows / name / STATE)!r} is missing but the window holds records "
                                    "beyond its planning; restore window.json from a backup")  # fmt: skip
        return committed

    def exists(self) -> bool:
        return self.settings_path.is_file()

    def init_cut_short(self) -> bool:
        """Whether ``program.json`` is here without ``pointer.json`` or any window: a `window init` that an earlier
        version (which wrote ``program.json`` before the pointer) was killed in; running init again finishes it."""
        return self.exists() and not (self.root / POINTER).exists() and not (self.root / "windows").exists()

    def require(self) -> None:
        if self.exists():
            return
        given = self.root.absolute()
        if given.name == PROGRAM and given.is_file():
            raise ConfigError(f"{str(self.root)!r} is the program's record; give its directory, {str(given.parent)!r}")
        if (program := next((p for p in given.parents if (p / PROGRAM).is_file()), None)) is not None:
            raise ConfigError(f"{str(self.root)!r} is inside window program {str(program)!r}; give that directory "
                              "(the window commands take the program's root and a window id)")  # fmt: skip
        raise ConfigError(
            f"{str(self.root)!r} holds no window program ({PROGRAM}); create one with "
            "python -m lit_psion window init ROOT --config configs/window_lora.yaml --base RUN_DIR"
        )

    def settings(self) -> ProgramSettings:
        self.require()
        values = record(self.settings_path, ("settings", "next_slice"))
        if values.get("settings_sha256") != sha256_json(values["settings"]):
            raise EvidenceError(f"{str(self.settings_path)!r}: its settings are not the ones `window init` recorded "
                                f"(settings_sha256 {values.get('settings_sha256')!r}, they hash to "
                                f"{sha256_json(values['settings'])}); a program's settings are fixed at init: restore "
                                "program.json, or init a new program with the settings you want")  # fmt: skip
        if (planned := self._first_planned_settings()) is not None and planned[1] != values["settings_sha256"]:
            raise EvidenceError(f"{str(self.settings_path)!r}: its settings are not the ones the program's windows "
                                f"were planned with ({planned[0]}'s planned receipt records settings_sha256 "
                                f"{str(planned[1])[:12]}..., program.json {str(values['settings_sha256'])[:12]}...): "
                                "its settings are fixed at init; restore program.json from a backup")  # fmt: skip
        return ProgramSettings.from_mapping(values["settings"], repr(str(self.settings_path)))

    def _first_planned_settings(self) -> tuple[str, object] | None:
        """(window, settings_sha256) of the first committed window whose planned receipt records the settings' digest
        (windows planned before it was recorded record none); None if no window does."""
        windows = self.root / "windows"
        names = sorted(path.name for path in windows.iterdir() if WINDOW_ID.fullmatch(path.name)) if (
            windows.is_dir()) else []  # fmt: skip
        for name in names:
            if not (self.window_dir(name) / STATE).exists():  # a planning cut short may leave a torn log
                continue
            detail = self._planning_receipt(name).get("detail")  # (an edited receipt: the chain's check names it)
            if isinstance(detail, dict) and "settings_sha256" in detail:
                return name, detail["settings_sha256"]
        return None

    def tokenizer(self) -> Path:
        """The program's tokenizer file, held to the sha256 ``window init`` recorded in program.json.

        Raises:
            EvidenceError: it is missing, a link, or another tokenizer (exit 5).
        """
        recorded = record(self.settings_path, ("tokenizer_sha256",))["tokenizer_sha256"]
        self.settings()
        path = self.root / TOKENIZER
        if not path.is_file() or path.is_symlink() or sha256_bytes(path.read_bytes()) != recorded:
            raise EvidenceError(f"{str(path)!r} is not the tokenizer the program was created with (sha256 "
                                f"{str(recorded)[:12]}...); restore it from a backup")  # fmt: skip
        return path

    # -- revisions ----------------------------------------------------------------------

    def revision(self, relative: str, digest: str) -> VerifiedCheckpoint:
        """The revision checkpoint ``relative`` (to the root), verified and held to ``digest``."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise CheckpointError(f"revision path {relative!r} leaves the program root {str(self.root)!r}")
        return verify_checkpoint(path, manifest_sha256=digest)

    def pointer(self) -> dict[str, str]:
        """The current input revision: ``{"revision": manifest sha256, "checkpoint": root-relative dir}``."""
        self.require()
        if self.init_cut_short():
            raise EvidenceError(f"{str(self.root / POINTER)!r} is missing: the window init that made "
                                f"{str(self.root)!r} was cut short; run the same window init again to finish it")
        return record(self.root / POINTER, ("revision", "checkpoint"))

    def move_pointer(self, revision: str, checkpoint: str, window_id: str | None) -> None:
        atomic_write_json(self.root / POINTER, {"revision": revision, "checkpoint": checkpoint, "window": window_id})

    # -- windows ------------------------------------------------------------------------

    def plan(self, window_id: str) -> WindowPlan:
        path = self.window_dir(window_id) / PLAN
        if not path.is_file() and (windows := self.window_ids()) and window_id in windows:
            raise EvidenceError(f"{str(path)!r} is missing: {window_id} was planned with it (its window.json is "
                                "there); restore it from a backup")  # fmt: skip
        if not path.is_file():
            raise ConfigError(f"no window {window_id!r} in {str(self.root)!r} (windows: "
                              f"{', '.join(windows) or 'none'})")  # fmt: skip
        try:
            plan = WindowPlan.from_json_dict(record(path))
        except (TypeError, KeyError, AttributeError) as error:
            raise EvidenceError(f"{str(path)!r} is not a window plan ({error}); it was edited") from error
        planned = self._planned_digest(window_id)
        if planned != plan.digest:
            raise EvidenceError(f"{str(path)!r} is not the plan {window_id} was planned with (its receipts record "
                                f"plan digest {str(planned)[:12]}..., the file hashes to {plan.digest[:12]}...); "
                                "it was edited")  # fmt: skip
        return plan

    def _planned_digest(self, window_id: str) -> str | None:
        """The plan digest the window's first receipt (``planned``) records."""
        return self._planning_receipt(window_id).get("plan_digest")

    def _planning_receipt(self, window_id: str) -> dict[str, Any]:
        """The body of the window's first receipt (``planned``)."""
        from lit_psion.core.chain import parse_receipt

        path = self.window_dir(window_id) / RECEIPTS_FILE
        try:
            with open(path, encoding="utf-8") as handle:
                first = parse_receipt(handle.readline())
        except (OSError, ValueError, TypeError, UnicodeDecodeError) as error:
            raise EvidenceError(
                f"{str(path)!r} has no readable planning receipt; the window's records are damaged"
            ) from error
        if first.kind != "window_state" or first.body.get("state") != PLANNED:
            raise EvidenceError(f"{str(path)!r} does not start with the window's planning receipt; it was edited")
        return first.body

    def state(self, window_id: str) -> str:
        return self.state_record(window_id)["state"]

    def state_record(self, window_id: str) -> dict[str, Any]:
        path = self.window_dir(window_id) / STATE
        values = record(path, ("state",))
        if not isinstance(values["state"], str):
            raise EvidenceError(f"{str(path)!r} is not a window state record; it was edited")
        return values

    def receipts(self, window_id: str) -> ReceiptLog:
        return ReceiptLog(self.window_dir(window_id) / RECEIPTS_FILE, run_id=f"window:{window_id}")

    def transition(self, window_id: str, target: str, detail: dict[str, Any] | None = None,
                   receipts: list[ReceiptBody] = (), then: Callable[[], None] | None = None) -> None:  # fmt: skip
        """Move ``window_id`` to ``target``: its receipts, then the state receipt, then ``then()`` (the pointer),
        then ``window.json``. A crash before ``window.json`` is rewritten leaves the window in its old state: the
        same step runs again and appends its receipts again (the last ones are the ones that count).

        Raises:
            WindowStateError: ``target`` is not the window's one legal next state (exit 13).
        """
        plan = self.plan(window_id)
        current = self.state(window_id)
        advance(current, target, window_id)
        verify_window_chain(self, window_id)
        log = self.receipts(window_id)
        try:
            for body in receipts:
                log.append(body)
            log.append(WindowStateReceipt(window_id=window_id, previous=current, state=target,
                                          plan_digest=plan.digest, detail=detail or {}))  # fmt: skip
            head = log.head
        finally:
            log.close()
        if then is not None:
            then()
        atomic_write_json(self.window_dir(window_id) / STATE, {"window_id": window_id, "state": target,
                                                               "receipts_head": head})  # fmt: skip


def corpus(program: Program, data: dict[str, Any]) -> Any:
    """The program's data, rebuilt from its settings with the program's tokenizer (manifest prepared)."""
    from lit_psion.datamodules.corpus import CorpusDataModule

    settings = {**data, "tokenizer_file": str(program.root / TOKENIZER)}
    settings.setdefault("batch_size", 1)
    corpus = CorpusDataModule(**settings)
    corpus.prepare()
    return corpus


def plan_data(program: Program, plan: WindowPlan) -> Any:
    """The program's data as the plan pinned it.

    Raises:
        DataManifestMismatch: the data rebuilt now is not the data the window was planned on (exit 3).
    """
    from lit_psion.core.errors import DataManifestMismatch

    data = corpus(program, plan.data)
    if data.prepare().digest != plan.data_manifest_digest:
        raise DataManifestMismatch(f"the data rebuilt now ({data.prepare().digest[:12]}...) is not the data "
                                   f"{plan.window_id} was planned on ({plan.data_manifest_digest[:12]}...); restore "
                                   "the program's data files")  # fmt: skip
    return data


def own_directory(path: Path) -> Path:
    """``path`` as a real directory of the program (created if missing), never written through a symlink.

    Raises:
        EvidenceError: ``path`` or its parent is a symlink (exit 5).
    """
    for part in (path.parent, path):
        if part.is_symlink():
            raise EvidenceError(f"{str(part)!r} is a symlink; the program's directories are its own: remove it")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _planning_cut_short(directory: Path) -> bool:
    """Whether ``directory`` holds only what :func:`plan_window` writes before ``window.json``: an empty
    ``contributions/``, ``plan.json`` and at most the ``planned`` receipt."""
    allowed = {"contributions", PLAN, RECEIPTS_FILE}
    entries = list(directory.iterdir()) if directory.is_dir() and not directory.is_symlink() else None
    if entries is None or any(entry.name not in allowed for entry in entries):
        return False
    contributions, receipts = directory / "contributions", directory / RECEIPTS_FILE
    if contributions.is_symlink() or (contributions.exists() and not contributions.is_dir()):
        return False
    if contributions.is_dir() and any(contributions.iterdir()):
        return False
    return not receipts.exists() or (receipts.is_file() and receipts.read_bytes().count(b"\n") <= 1)


def next_slice(program: Program) -> int:
    """``program.json``'s cursor of fresh slices: a count, or evidence that does not verify (exit 5)."""
    value = record(program.settings_path, ("settings", "next_slice"))["next_slice"]
    if type(value) is not int or value < 0:
        raise EvidenceError(f"{str(program.settings_path)!r}: next_slice is {value!r}, not a count of slices used; "
                            "restore program.json from a backup")  # fmt: skip
    return value


def plan_window(root: Path, contributors: int | None = None) -> WindowPlan:
    """Plan the next window from the current pointer: fresh slices, plus each slice the previous window marked
    ``replay_required`` (once).

    Raises:
        WindowStateError: the latest window is not reconciled yet.
        DataError: the data has no fresh slices left for the planned contributors.
    """
    from lit_psion.windows.status import verify_program  # (status reads this module's records)

    verify_program(root)  # planned on a pointer or dispositions verify refuses, the next window built on them
    program = Program(root)
    settings = program.settings()
    values = record(program.settings_path, ("settings", "next_slice"))
    windows = program.window_ids()
    previous = windows[-1] if windows else None
    if previous is not None and (state := program.state(previous)) != RECONCILED:
        opening = f"open it (window open {shell_words(root, previous)}), or abandon it: " if state == PLANNED else ""
        raise WindowStateError(f"window {previous} is {state!r}, not reconciled; {opening}close it first "
                               f"(python -m lit_psion window close {shell_words(root, previous)})")  # fmt: skip
    window_id = f"w-{len(windows) + 1:04d}"
    shutil.rmtree(program.window_dir(window_id), ignore_errors=True)  # a planning cut short before window.json
    pointer = program.pointer()  # (its revision verified by verify_program above)
    data = corpus(program, settings.data)
    train, val = data.samples("train"), data.samples("val")
    count = contributors or settings.contributors
    used = [a.slice.index for w in windows for a in program.plan(w).assignments if a.replay_of is None]
    first = max(next_slice(program), max(used, default=-1) + 1)  # never a slice twice, even if the cursor lags
    available = (len(train) // settings.slice_samples) - first
    if available < count:
        left = max(available, 0)
        need = f"{count} contributors need one each" if count != 1 else "1 contributor needs one"
        raise DataError(f"the data has {left} fresh slice(s) of {settings.slice_samples} samples left and {need}; "
                        + (f"plan at most {left} (--contributors {left})" if left else "this program's slices are "
                           "used up") + ", or init a new program with more text (data.files) "
                        "or a smaller slice_samples (both are fixed at init)")  # fmt: skip
    ids = [f"c{i}" for i in range(count)]  # after the check: a huge count is refused, not built
    seed = settings.data.get("seed", SLICE_SEED)
    fresh = [_slice(train, i, settings.slice_samples, seed) for i in range(first, first + count)]
    replays = _replays(program, previous) if previous else []
    held = len(val) // 2
    if held < 1:
        raise DataError(f"the validation split has {len(val)} sample(s); the validator and the gate need one each")
    if windows and (first_manifest := program.plan(windows[0]).data_manifest_digest) != data.prepare().digest:
        raise DataError(f"the program's data ({settings.data.get('files')!r}) changed since {windows[0]} was planned "
                        f"(data manifest {first_manifest[:12]}..., now {data.prepare().digest[:12]}...): slices and "
                        "held-out halves are cut from it, so trained text could be held out or trained twice; restore "
                        "the data files (and the program's tokenizer.json) as they were")  # fmt: skip
    plan = WindowPlan(
        window_id=window_id, previous_window=previous, input_revision=pointer["revision"],
        input_checkpoint=pointer["checkpoint"], contributors=tuple(ids),
        assignments=plan_assignments(ids, fresh, replays, len(windows) + 1), data=settings.data,
        data_manifest_digest=data.prepare().digest, lora=settings.lora, budget=settings.budget,
        validator=ValidatorPolicy(**settings.validator), gate=settings.gate,
        held_out={"validator": [0, held], "gate": [held, len(val)]},
    )  # fmt: skip
    directory = program.window_dir(window_id)
    (directory / "contributions").mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / PLAN, plan.to_json_dict())
    log = program.receipts(window_id)
    try:
        tokenizer = record(program.settings_path, ("tokenizer_sha256",))["tokenizer_sha256"]
        log.append(WindowStateReceipt(window_id=window_id, previous=None, state=PLANNED, plan_digest=plan.digest,
                                      detail={"previous_window": previous, "input_revision": plan.input_revision,
                                              "assignments": len(plan.assignments), "tokenizer_sha256": tokenizer,
                                              "settings_sha256": values["settings_sha256"]}))  # fmt: skip
        head = log.head
    finally:
        log.close()
    atomic_write_json(directory / STATE, {"window_id": window_id, "state": PLANNED, "receipts_head": head})
    atomic_write_json(program.settings_path, {**values, "next_slice": first + count})
    return plan


def verify_window_chain(program: Program, window_id: str) -> None:
    """The window's receipt chain verifies from its genesis to the head ``window.json`` records.

    Raises:
        EvidenceError: an edited, reordered, deleted or cut-off receipt (exit 5).
    """
    from lit_psion.core.chain import verify_log

    path = program.window_dir(window_id) / RECEIPTS_FILE
    head = program.state_record(window_id).get("receipts_head")
    if not path.is_file():
        raise EvidenceError(f"{str(path)!r} is missing: {window_id} has no receipts")
    result = verify_log(path, expected_head=head, run_id=f"window:{window_id}")
    if not result.ok:
        raise EvidenceError(f"{str(path)!r}: {result.describe()}")


def _slice(train: Any, index: int, size: int, seed: int) -> DataSlice:
    from lit_psion.windows.data import slice_digest, slice_indices

    start = index * size
    indices = slice_indices(train, start, start + size, seed)
    return DataSlice(index=index, start=start, stop=start + size, digest=slice_digest(train, indices))


def _replays(program: Program, previous: str) -> list[tuple[str, DataSlice]]:
    """The previous window's replay_required slices, unless they were themselves a replay (reassigned once)."""
    plan = program.plan(previous)
    dispositions = record(program.window_dir(previous) / DISPOSITIONS, ("assignments",))
    replays = []
    for assignment in plan.assignments:
        entry = dispositions["assignments"].get(assignment.assignment_id, {})
        if entry.get("disposition") == REPLAY_REQUIRED and assignment.replay_of is None:
            replays.append((f"{previous}/{assignment.assignment_id}", assignment.slice))
    return replays


def remove_staging(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
