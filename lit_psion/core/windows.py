"""Adapter windows (seed 004): the window state machine, plans, assignments and dispositions.

Framework-free truth shared by every engine (one machine, Flower): what a window is, which
state follows which, how data slices are planned, and the validator's vocabulary. The torch
side (training a contribution, scoring it, aggregating) is :mod:`lit_psion.windows`.

A window moves ``planned -> active -> sealed -> scored -> reconciled`` and nowhere else:
:func:`advance` refuses any other step, re-sealing included.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from typing import Any

from lit_psion.core.digest import sha256_json
from lit_psion.core.errors import LitPsionError

PLANNED, ACTIVE, SEALED, SCORED, RECONCILED = "planned", "active", "sealed", "scored", "reconciled"
WINDOW_STATES = (PLANNED, ACTIVE, SEALED, SCORED, RECONCILED)
NEXT_STATE = {PLANNED: ACTIVE, ACTIVE: SEALED, SEALED: SCORED, SCORED: RECONCILED}
"""The one legal successor of each state (a reconciled window is final)."""

ACCEPTED, QUARANTINED, REJECTED, REPLAY_REQUIRED = "accepted", "quarantined", "rejected", "replay_required"
DISPOSITIONS = (ACCEPTED, QUARANTINED, REJECTED, REPLAY_REQUIRED)

REASONS = {
    # rejected: the contribution is permanently excluded
    "malformed": REJECTED,  # no readable contribution.json / adapter file, or a field missing
    "digest_mismatch": REJECTED,  # the bytes are not the ones the submission recorded
    "stale_revision": REJECTED,  # trained on another input revision than the window's
    "wrong_contributor": REJECTED,  # submitted by another contributor than the one assigned
    "wrong_slice": REJECTED,  # trained on another data slice than the one assigned
    "wrong_shape": REJECTED,  # targets, rank, alpha or tensor shapes are not the plan's
    "non_finite": REJECTED,  # a NaN or inf in the adapter or its execution summary
    "duplicate_artifact": REJECTED,  # the same adapter bytes were submitted before (this window or an earlier one)
    # quarantined: kept for review, not aggregated
    "delta_norm_outlier": QUARANTINED,  # ||dW|| far above (or far below: a free rider) the window's median
    "held_out_regression": QUARANTINED,  # input revision + this delta is worse held out than the input revision
    # replay_required: the slice is trained again under a fresh assignment in the next window
    "missing_at_seal": REPLAY_REQUIRED,
    "arrived_after_seal": REPLAY_REQUIRED,
}
"""Every reason code and the disposition it leads to."""

WINDOW_ID = re.compile(r"w-\d{4}")
ASSIGNMENT_ID = re.compile(r"a\d{2,4}")
CONTRIBUTOR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class WindowStateError(LitPsionError):
    """A window asked to move where its state machine does not go (re-sealing, scoring before sealing, ...)."""

    exit_code = 13
    failure_class = "window_state_invalid"


def advance(current: str, target: str, window_id: str = "window") -> str:
    """``target`` if it is ``current``'s one legal successor.

    Raises:
        WindowStateError: any other transition (exit 13), naming both states and the legal one.
    """
    if current not in NEXT_STATE and current != RECONCILED:
        raise WindowStateError(f"{window_id} is in unknown state {current!r}; states are {', '.join(WINDOW_STATES)}")
    if NEXT_STATE.get(current) != target:
        legal = f"the only legal next state is {NEXT_STATE[current]!r}" if current in NEXT_STATE else "it is final"
        raise WindowStateError(f"{window_id} cannot go from {current!r} to {target!r}: {legal}")
    return target


def disposition_for(reasons: list[str] | tuple[str, ...]) -> str:
    """The disposition a list of reason codes leads to: the most severe one, ``accepted`` when there are none."""
    kinds = {REASONS[reason] for reason in reasons}
    for disposition in (REJECTED, REPLAY_REQUIRED, QUARANTINED):
        if disposition in kinds:
            return disposition
    return ACCEPTED


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DataSlice:
    """Training samples ``[start, stop)`` of the program's data, pinned by the digest of their tokens."""

    index: int
    start: int
    stop: int
    digest: str

    @property
    def samples(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """One contributor's work in a window: its slice, its seed, and the slice it replays (if any)."""

    assignment_id: str
    contributor: str
    slice: DataSlice
    seed: int
    replay_of: str | None = None
    """``w-NNNN/aNN``: the assignment whose slice was ``replay_required`` and is trained again here."""

    @classmethod
    def from_json_dict(cls, record: dict[str, Any]) -> Assignment:
        return cls(**{**record, "slice": DataSlice(**record["slice"])})


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ValidatorPolicy:
    """What the validator holds every contribution to.

    Args:
        norm_factor: Quarantine a contribution whose ||dW|| exceeds this multiple of the window's median.
        max_regression: Quarantine a contribution whose held-out loss (input revision + its delta) exceeds
            the input revision's by more than this (nats; a small margin, so an honest delta is not quarantined
            for the noise of a small split).
        held_out_samples: Validation samples scored per contribution (``None``: the validator's whole split).
    """

    norm_factor: float = 4.0
    max_regression: float = 0.01
    held_out_samples: int | None = None

    def problems(self) -> list[str]:
        problems = []
        if not self.norm_factor > 1:
            problems.append(f"validator.norm_factor must be > 1, got {self.norm_factor!r}")
        if not self.max_regression >= 0:
            problems.append(f"validator.max_regression must be >= 0, got {self.max_regression!r}")
        if self.held_out_samples is not None and self.held_out_samples < 1:
            problems.append(f"validator.held_out_samples must be >= 1, got {self.held_out_samples!r}")
        return problems


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WindowPlan:
    """What ``plan.json`` records: everything a contributor and the validator need, digested as one."""

    window_id: str
    previous_window: str | None
    input_revision: str
    """The manifest sha256 of the revision checkpoint every contributor starts from."""
    input_checkpoint: str
    """That checkpoint's directory, relative to the program root."""
    contributors: tuple[str, ...]
    """The sealed contributor set: only these may submit."""
    assignments: tuple[Assignment, ...]
    data: dict[str, Any]
    """The CorpusDataModule settings every party rebuilds the data from."""
    data_manifest_digest: str
    lora: dict[str, Any]
    """``targets``, ``rank``, ``alpha``."""
    budget: dict[str, Any]
    """``steps``, ``batch_size``, ``lr``: the same for every contributor."""
    validator: ValidatorPolicy
    gate: dict[str, Any]
    """``min_delta``: the improvement on the gate split a promotion needs."""
    held_out: dict[str, list[int]]
    """Validation sample ranges ``[start, stop)``: ``validator`` (per contribution) and ``gate`` (promotion);
    no contributor trains on either."""

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def digest(self) -> str:
        return sha256_json(self.to_json_dict())

    def assignment(self, assignment_id: str) -> Assignment:
        for assignment in self.assignments:
            if assignment.assignment_id == assignment_id:
                return assignment
        known = ", ".join(a.assignment_id for a in self.assignments)
        raise KeyError(f"{self.window_id} has no assignment {assignment_id!r} (its assignments: {known})")

    @classmethod
    def from_json_dict(cls, record: dict[str, Any]) -> WindowPlan:
        return cls(**{**record, "contributors": tuple(record["contributors"]),
                      "assignments": tuple(Assignment.from_json_dict(a) for a in record["assignments"]),
                      "validator": ValidatorPolicy(**record["validator"])})  # fmt: skip


def plan_assignments(contributors: list[str], fresh: list[DataSlice], replays: list[tuple[str, DataSlice]],
                     window_seed: int) -> tuple[Assignment, ...]:  # fmt: skip
    """One assignment per fresh slice, round-robin over ``contributors``, then one per replayed slice.

    ``replays`` are ``(previous assignment, slice)`` pairs; each becomes exactly one assignment here.
    """
    slices = [(None, s) for s in fresh] + list(replays)
    assignments = []
    for i, (replay_of, data_slice) in enumerate(slices):
        assignments.append(Assignment(assignment_id=f"a{i:02d}", contributor=contributors[i % len(contributors)],
                                      slice=data_slice, seed=window_seed * 1000 + data_slice.index,
                                      replay_of=replay_of))  # fmt: skip
    return tuple(assignments)


NORM_CHECK_MIN = 3
"""The fewest measured contributions the delta-norm check can judge (below it, any scale passes it)."""


def norm_outliers(norms: dict[str, float], factor: float) -> set[str]:
    """The keys whose norm is more than ``factor`` times the median of all, or less than the median over
    ``factor`` (a delta of almost nothing: a free rider); below three, only a delta of exactly nothing (a median of
    two cannot tell which one is the outlier, but no training leaves B at its zero start)."""
    empty = {key for key, norm in norms.items() if norm == 0}
    if len(norms) < NORM_CHECK_MIN:
        return empty
    median = statistics.median(norms.values())
    return empty | {key for key, norm in norms.items() if norm > factor * median or norm * factor < median}
