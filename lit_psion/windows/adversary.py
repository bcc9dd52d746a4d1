"""Adversarial contributors, for drills, tests and benchmarks: what the validator must dispose of.

Each builds a contribution the way a dishonest or broken contributor would, through the same
writer an honest one uses, so the validator sees exactly what it would see in the field.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lit_psion.core.windows import ACTIVE, Assignment, WindowPlan
from lit_psion.windows.contribute import Batch, submit, write_artifact
from lit_psion.windows.program import Program, remove_staging


def shuffled_labels(seed: int = 0) -> Callable[[Batch], Batch]:
    """A batch transform that trains on targets shuffled across the batch's positions (a poisoned objective)."""
    generator = torch.Generator().manual_seed(seed)

    def transform(batch: Batch) -> Batch:
        targets = batch["targets"].flatten()
        shuffled = targets[torch.randperm(targets.numel(), generator=generator)].view_as(batch["targets"])
        return {**batch, "targets": shuffled}

    return transform


def scaled(tensors: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    """The adapter with every B scaled by ``factor`` (its delta scaled by ``factor``)."""
    return {name: value * factor if name.endswith("lora_b") else value for name, value in tensors.items()}


def with_nan(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter with one NaN in its first tensor."""
    poisoned = {name: value.clone() for name, value in tensors.items()}
    first = next(iter(poisoned.values()))
    first.view(-1)[0] = float("nan")
    return poisoned


def place(program: Program, plan: WindowPlan, assignment: Assignment, tensors: dict[str, torch.Tensor],
          summary: dict[str, Any], contributor: str | None = None,
          claims: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Submit ``tensors`` for ``assignment`` (as ``contributor``, claiming ``claims``), as a contributor would; into a
    window no longer active, as one that ignores the state would (its seal has frozen what counts)."""
    staged = program.window_dir(plan.window_id) / "contributions" / f".{assignment.assignment_id}.tmp-{os.getpid()}"
    remove_staging(staged)
    write_artifact(staged, plan, assignment, contributor or assignment.contributor, tensors, summary, claims)
    if program.state(plan.window_id) != ACTIVE:
        os.rename(staged, staged.parent / assignment.assignment_id)
        return staged.parent / assignment.assignment_id
    return submit(program, plan.window_id, assignment.assignment_id, staged)


def flip_byte(path: Path, offset: int = -1) -> None:
    """Flip one bit of one byte of ``path`` in place (a corrupted upload)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
