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

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lit_psion.core import atomic_write_bytes, atomic_write_json, read_json, sha256_bytes
from lit_psion.core.chain import ReceiptLog
from lit_psion.core.checkpoint import VerifiedCheckpoint, verify_checkpoint
from lit_psion.core.errors import CheckpointError, ConfigError, DataError, EvidenceError
from lit_psion.core.layout import POINTER_FILE, PROMOTION_FILE, RECEIPTS_FILE, TOKENIZER_FILE
from lit_psion.core.receipts import ReceiptBody, WindowStateReceipt
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

FORMAT_VERSION = 1
PROGRAM, PLAN, STATE, DISPOSITIONS = "program.json", "plan.json", "window.json", "dispositions.json"
POINTER, TOKENIZER, PROMOTION = POINTER_FILE, TOKENIZER_FILE, PROMOTION_FILE  # the names a run uses for the same
BASE_REVISION = "revisions/base"
SLICE_SEED = 1337
"""The permutation slices are cut from, unless ``data.seed`` sets it (the corpus' own seed default)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProgramSettings:
    """What ``configs/window_lora.yaml`` sets (docs/windows.md).

    Args:
        contributors: How many contributors a window plans for (ids ``c0``, ``c1``, ...).
        slice_samples: Training samples per data slice (one slice per assignment).
        data: CorpusDataModule settings (``files``, ``block_size``, ``split``, ``val_fraction``, ...); the
            tokenizer is always the base run's.
        lora: ``targets``, ``rank``, ``alpha`` of every contribution.
        budget: ``steps``, ``batch_size``, ``lr`` of every contributor.
        validator: :class:`~lit_psion.core.windows.ValidatorPolicy` settings.
        gate: ``min_delta``: held-out improvement a promotion needs.
    """

    contributors: int = 4
    slice_samples: int = 160
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    lora: dict[str, Any] = dataclasses.field(default_factory=lambda: {"targets": ["lm_head"], "rank": 8,
                                                                      "alpha": 16.0})  # fmt: skip
    budget: dict[str, Any] = dataclasses.field(default_factory=lambda: {"steps": 20, "batch_size": 8, "lr": 0.01})
    validator: dict[str, Any] = dataclasses.field(default_factory=dict)
    gate: dict[str, Any] = dataclasses.field(default_factory=lambda: {"min_delta": 0.0})

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Any, where: str) -> ProgramSettings:
        if not isinstance(values, dict):
            raise ConfigError(f"{where} is not a mapping of window settings; see configs/window_lora.yaml")
        known = {field.name for field in dataclasses.fields(cls)}
        if unknown := sorted(set(values) - known):
            raise ConfigError(f"{where}: unknown window setting {unknown[0]!r}; settings are "
                              f"{', '.join(sorted(known))}")  # fmt: skip
        settings = cls(**values)
        settings.check(where)
        return settings

    def check(self, where: str) -> None:
        problems = []
        if not isinstance(self.contributors, int) or self.contributors < 1:
            problems.append(f"contributors must be an integer >= 1, got {self.contributors!r}")
        if not isinstance(self.slice_samples, int) or self.slice_samples < 1:
            problems.append(f"slice_samples must be an integer >= 1, got {self.slice_samples!r}")
        for key in ("steps", "batch_size"):
            value = self.budget.get(key)
            if not isinstance(value, int) or value < 1:
                problems.append(f"budget.{key} must be an integer >= 1, got {value!r}")
        if not isinstance(self.budget.get("lr"), (int, float)) or not self.budget["lr"] > 0:
            problems.append(f"budget.lr must be > 0, got {self.budget.get('lr')!r}")
        for key in ("targets", "rank", "alpha"):
            if key not in self.lora:
                problems.append(f"lora.{key} is missing")
        if not isinstance(self.lora.get("rank"), int) or self.lora.get("rank", 0) < 1:
            problems.append(f"lora.rank must be an integer >= 1, got {self.lora.get('rank')!r}")
        if "tokenizer_file" in self.data or "tokenizer" in self.data:
            problems.append("data.tokenizer_file / data.tokenizer cannot be set: a window program tokenizes with "
                            "its base run's tokenizer")  # fmt: skip
        try:
            problems += ValidatorPolicy(**self.validator).problems()
        except TypeError as error:
            problems.append(f"validator: {error}")
        if not isinstance(self.gate.get("min_delta", 0.0), (int, float)) or self.gate.get("min_delta", 0.0) < 0:
            problems.append(f"gate.min_delta must be >= 0, got {self.gate.get('min_delta')!r}")
        if problems:
            raise ConfigError(f"{where}: {problems[0]}")


def load_settings(path: Path) -> ProgramSettings:
    """The window settings in a YAML file (its ``window:`` block, or the whole file)."""
    if not path.is_file():
        raise ConfigError(f"window config {str(path)!r} not found; start from configs/window_lora.yaml")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"window config {str(path)!r} is not valid YAML ({str(error).splitlines()[0]})") from error
    if isinstance(values, dict) and "window" in values:
        values = values["window"]
    return ProgramSettings.from_mapping(values, repr(str(path)))


class Program:
    """The window program under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- layout -------------------------------------------------------------------------

    @property
    def settings_path(self) -> Path:
        return self.root / PROGRAM

    def window_dir(self, window_id: str) -> Path:
        return self.root / "windows" / window_id

    def window_ids(self) -> list[str]:
        windows = self.root / "windows"
        if not windows.is_dir():
            return []
        return sorted(p.name for p in windows.iterdir() if WINDOW_ID.fullmatch(p.name) and (p / PLAN).is_file())

    def exists(self) -> bool:
        return self.settings_path.is_file()

    def require(self) -> None:
        if not self.exists():
            raise ConfigError(f"{str(self.root)!r} holds no window program ({PROGRAM}); create one with "
                              "python -m lit_psion window init ROOT --config configs/window_lora.yaml --base RUN_DIR")

    def settings(self) -> ProgramSettings:
        self.require()
        record = read_json(self.settings_path)
        return ProgramSettings.from_mapping(record["settings"], repr(str(self.settings_path)))

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
        record = read_json(self.root / POINTER)
        if not isinstance(record, dict) or not {"revision", "checkpoint"} <= record.keys():
            raise CheckpointError(f"{str(self.root / POINTER)!r} is not a revision pointer; it was edited")
        return record

    def move_pointer(self, revision: str, checkpoint: str, window_id: str | None) -> None:
        atomic_write_json(self.root / POINTER, {"revision": revision, "checkpoint": checkpoint, "window": window_id})

    # -- windows ------------------------------------------------------------------------

    def plan(self, window_id: str) -> WindowPlan:
        path = self.window_dir(window_id) / PLAN
        if not path.is_file():
            raise ConfigError(f"no window {window_id!r} in {str(self.root)!r} (windows: "
                              f"{', '.join(self.window_ids()) or 'none'})")  # fmt: skip
        return WindowPlan.from_json_dict(read_json(path))

    def state(self, window_id: str) -> str:
        return self.state_record(window_id)["state"]

    def state_record(self, window_id: str) -> dict[str, Any]:
        path = self.window_dir(window_id) / STATE
        try:
            record = read_json(path)
        except (OSError, ValueError) as error:
            raise EvidenceError(f"{str(path)!r} cannot be read ({error}); the window's state is unknown") from error
        if not isinstance(record, dict) or not isinstance(record.get("state"), str):
            raise EvidenceError(f"{str(path)!r} is not a window state record; it was edited")
        return record

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


def init_program(root: Path, settings: ProgramSettings, base: str | Path) -> dict[str, str]:
    """Create a program under ``root`` from the verified base run or checkpoint ``base``: settings, tokenizer,
    revision 0 and the pointer at it.

    Raises:
        ConfigError: ``root`` already holds a program, or ``base`` is neither a run nor a checkpoint directory.
        CheckpointError: the base does not verify, or it is not a DecoderLM.
    """
    from lit_psion.checkpoint_io import write_checkpoint
    from lit_psion.models.adapter_lm import load_base

    program = Program(root)
    if program.exists():
        raise ConfigError(f"{str(root)!r} already holds a window program; plan its next window with "
                          f"python -m lit_psion window plan {root}")  # fmt: skip
    state, path, digest = load_base(base)
    tokenizer = _tokenizer_of(Path(base), path)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / TOKENIZER, tokenizer)
    revision_dir = root / BASE_REVISION
    write_checkpoint({"global_step": 0, "state_dict": state["state_dict"], "decoder_config": state["decoder_config"],
                      "model_signature": state.get("model_signature"),
                      "lit_psion": {"writer": "window init", "parent": digest}}, revision_dir)  # fmt: skip
    revision = verify_checkpoint(revision_dir)
    data = {**settings.data}
    data["files"] = [str(Path(f).resolve()) for f in ([data["files"]] if isinstance(data.get("files"), str)
                                                      else data.get("files", []))]  # fmt: skip
    record = {"format_version": FORMAT_VERSION, "settings": {**settings.to_json_dict(), "data": data},
              "base": {"checkpoint_digest": digest, "path": str(path)}, "tokenizer_sha256": sha256_bytes(tokenizer),
              "next_slice": 0}  # fmt: skip
    atomic_write_json(root / PROGRAM, record)
    program.move_pointer(revision.manifest_sha256, BASE_REVISION, None)
    return {"revision": revision.manifest_sha256, "base": digest}


def _tokenizer_of(base: Path, checkpoint: Path) -> bytes:
    for candidate in (base / TOKENIZER, checkpoint.parent.parent / TOKENIZER):
        if candidate.is_file():
            return candidate.read_bytes()
    raise ConfigError(f"base {str(base)!r} has no {TOKENIZER} beside it; give the base run directory")


def corpus(program: Program, data: dict[str, Any]) -> Any:
    """The program's data, rebuilt from its settings with the program's tokenizer (manifest prepared)."""
    from lit_psion.datamodules.corpus import CorpusDataModule

    settings = {**data, "tokenizer_file": str(program.root / TOKENIZER)}
    settings.setdefault("batch_size", 1)
    corpus = CorpusDataModule(**settings)
    corpus.prepare()
    return corpus


def plan_window(root: Path, contributors: int | None = None) -> WindowPlan:
    """Plan the next window from the current pointer: fresh slices, plus each slice the previous window marked
    ``replay_required`` (once).

    Raises:
        WindowStateError: the latest window is not reconciled yet.
        DataError: the data has no fresh slices left for the planned contributors.
    """
    program = Program(root)
    settings = program.settings()
    record = read_json(program.settings_path)
    windows = program.window_ids()
    previous = windows[-1] if windows else None
    if previous is not None and program.state(previous) != RECONCILED:
        raise WindowStateError(f"window {previous} is {program.state(previous)!r}, not reconciled; close it first "
                               f"(python -m lit_psion window close {program.window_dir(previous)})")  # fmt: skip
    window_id = f"w-{len(windows) + 1:04d}"
    pointer = program.pointer()
    program.revision(pointer["checkpoint"], pointer["revision"])
    data = corpus(program, settings.data)
    train, val = data.samples("train"), data.samples("val")
    count = contributors or settings.contributors
    ids = [f"c{i}" for i in range(count)]
    first = record["next_slice"]
    available = (len(train) // settings.slice_samples) - first
    if available < count:
        raise DataError(f"the data has {max(available, 0)} fresh slice(s) of {settings.slice_samples} samples "
                        f"left, {count} contributors need one each; add text (data.files) or lower "
                        "slice_samples")  # fmt: skip
    seed = settings.data.get("seed", SLICE_SEED)
    fresh = [_slice(train, i, settings.slice_samples, seed) for i in range(first, first + count)]
    replays = _replays(program, previous) if previous else []
    held = len(val) // 2
    if held < 1:
        raise DataError(f"the validation split has {len(val)} sample(s); the validator and the gate need one each")
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
        log.append(WindowStateReceipt(window_id=window_id, previous=None, state=PLANNED, plan_digest=plan.digest,
                                      detail={"previous_window": previous, "input_revision": plan.input_revision,
                                              "assignments": len(plan.assignments)}))  # fmt: skip
        head = log.head
    finally:
        log.close()
    atomic_write_json(directory / STATE, {"window_id": window_id, "state": PLANNED, "receipts_head": head})
    atomic_write_json(program.settings_path, {**record, "next_slice": first + count})
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
        raise EvidenceError(f"{str(path)!r}: line {result.line}: {result.reason}: {result.detail}")


def _slice(train: Any, index: int, size: int, seed: int) -> DataSlice:
    from lit_psion.windows.data import slice_digest, slice_indices

    start = index * size
    indices = slice_indices(train, start, start + size, seed)
    return DataSlice(index=index, start=start, stop=start + size, digest=slice_digest(train, indices))


def _replays(program: Program, previous: str) -> list[tuple[str, DataSlice]]:
    """The previous window's replay_required slices, unless they were themselves a replay (reassigned once)."""
    plan = program.plan(previous)
    dispositions = read_json(program.window_dir(previous) / DISPOSITIONS)
    replays = []
    for assignment in plan.assignments:
        entry = dispositions["assignments"].get(assignment.assignment_id, {})
        if entry.get("disposition") == REPLAY_REQUIRED and assignment.replay_of is None:
            replays.append((f"{previous}/{assignment.assignment_id}", assignment.slice))
    return replays


def remove_staging(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
