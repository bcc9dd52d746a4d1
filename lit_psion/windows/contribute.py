"""A contributor's side of a window: train a LoRA adapter from B=0 on the input revision over its slice, then
submit it.

The artifact is a directory: ``adapter.safetensors`` (the LoRA tensors, named as in ``AdapterLM``) and
``contribution.json`` (window, assignment, contributor, the revision and slice it was trained on, the
LoRA shape, the execution summary, and the adapter file's sha256). It is built under a staging name
and renamed into ``contributions/<assignment>/``: the coordinator never sees half an artifact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors.torch import save

from lit_psion.core import atomic_write_bytes, atomic_write_json, sha256_bytes
from lit_psion.core.errors import ConfigError, DataManifestMismatch
from lit_psion.core.windows import ACTIVE, Assignment, WindowPlan, WindowStateError
from lit_psion.windows.data import slice_digest, slice_indices
from lit_psion.windows.program import (
    ADAPTER,
    CONTRIBUTION,
    SLICE_SEED,
    Program,
    corpus,
    own_directory,
    remove_staging,
)

FORMAT_VERSION = 1
Batch = dict[str, torch.Tensor]


class _Losses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """A contributor's fit without Lightning's banner and its warnings about what a contribution does not use
    (a validation loop, loader workers): one line per contribution is what the coordinator's log shows."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def slice_batches(samples: Any, indices: list[int], seed: int, steps: int, batch_size: int) -> list[Batch]:
    """``steps`` batches over the samples ``indices``: seeded permutations of them, one after another."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order += [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
    return [samples[order[i * batch_size : (i + 1) * batch_size]] for i in range(steps)]


def train_adapter(
    program: Program, plan: WindowPlan, assignment: Assignment, transform: Callable[[Batch], Batch] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the assignment's adapter on the verified input revision; its LoRA tensors and execution summary.

    ``transform`` rewrites each batch before it is trained on (what an adversarial contributor does in tests
    and benchmarks; an honest contributor passes None).

    Raises:
        CheckpointError: the input revision does not verify against the plan's digest (exit 4).
        DataManifestMismatch: the data rebuilt here is not the plan's, or the slice's tokens differ (exit 3).
    """
    revision = program.revision(plan.input_checkpoint, plan.input_revision)
    data = corpus(program, plan.data)
    if data.prepare().digest != plan.data_manifest_digest:
        raise DataManifestMismatch(f"the data rebuilt here ({data.prepare().digest[:12]}...) is not the plan's "
                                   f"({plan.data_manifest_digest[:12]}...); use the program's data files")  # fmt: skip
    samples = data.samples("train")
    data_slice = assignment.slice
    indices = slice_indices(samples, data_slice.start, data_slice.stop, plan.data.get("seed", SLICE_SEED))
    if slice_digest(samples, indices) != data_slice.digest:
        raise DataManifestMismatch(f"slice {data_slice.index} of the data here does not match its digest in the plan")
    return train_lora(revision.path, plan.lora, plan.budget, samples, indices, assignment.seed, transform)


def train_lora(revision: Path, lora: dict[str, Any], budget: dict[str, Any], samples: Any, indices: list[int],
               seed: int, transform: Callable[[Batch], Batch] | None = None,
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:  # fmt: skip
    """LoRA (``lora``'s targets, rank, alpha) on the checkpoint ``revision``, trained from B=0 (A drawn from
    ``seed``) for ``budget``'s steps over the samples ``indices``: its tensors and execution summary."""
    from lit_psion.models.adapter_lm import AdapterLM
    from lit_psion.nn.optim import OptimizerConfig

    steps, batch_size, lr = budget["steps"], budget["batch_size"], budget["lr"]
    L.seed_everything(seed, verbose=False)  # the adapter's A init: B starts at zero
    model = AdapterLM(base_checkpoint=str(revision), targets=lora["targets"], rank=lora["rank"], alpha=lora["alpha"],
                      optimizer=OptimizerConfig(name="adamw", lr=lr, weight_decay=0.0, warmup_steps=0,
                                                decay_steps=steps))  # fmt: skip
    batches = slice_batches(samples, indices, seed, steps, batch_size)
    if transform is not None:
        batches = [transform(batch) for batch in batches]
    losses = _Losses()
    with _quiet():
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            num_sanity_val_steps=0, gradient_clip_val=1.0, callbacks=[losses])  # fmt: skip
    started = time.perf_counter()
    with _quiet():
        trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    tensors = {name: value.detach().contiguous().clone() for name, value in model.state_dict().items()
               if ".lora_" in name}  # fmt: skip
    summary = {"steps": trainer.global_step, "tokens": sum(int(b["targets"].numel()) for b in batches),
               "first_loss": losses.losses[0], "last_loss": losses.losses[-1],
               "mean_loss": sum(losses.losses) / len(losses.losses),
               "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip
    return tensors, summary


def write_artifact(directory: Path, plan: WindowPlan, assignment: Assignment, contributor: str,
                   tensors: dict[str, torch.Tensor], summary: dict[str, Any],
                   claims: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write an artifact directory: the tensors, then ``contribution.json`` binding them by sha256.

    ``claims`` overrides what the metadata claims (the revision, the slice, the shape): an honest
    contributor claims the plan's.
    """
    directory.mkdir(parents=True, exist_ok=True)
    data = save(tensors)
    atomic_write_bytes(directory / ADAPTER, data)
    meta = {"format_version": FORMAT_VERSION, "window_id": plan.window_id, "assignment_id": assignment.assignment_id,
            "contributor": contributor, "input_revision": plan.input_revision, "slice_index": assignment.slice.index,
            "slice_digest": assignment.slice.digest, "targets": plan.lora["targets"], "rank": plan.lora["rank"],
            "alpha": plan.lora["alpha"], "summary": summary, "adapter_sha256": sha256_bytes(data),
            **(claims or {})}  # fmt: skip
    atomic_write_json(directory / CONTRIBUTION, meta)
    return directory


def submit(program: Program, window_id: str, assignment_id: str, staged: Path) -> Path:
    """Rename the staged artifact into ``contributions/<assignment>/`` (one submission per assignment), while the
    window is active.

    Raises:
        ConfigError: the assignment already has a submission (exit 2; nothing is replaced).
        WindowStateError: the window was sealed while the contributor trained (exit 13): nothing is submitted, or
            (sealed between the check and the rename) what arrived is not counted, as its seal records.
    """
    if (state := program.state(window_id)) != ACTIVE:
        remove_staging(staged)
        raise WindowStateError(f"{window_id} became {state!r} while {assignment_id} trained: nothing was submitted; "
                               "the next window replays its slice")  # fmt: skip
    target = own_directory(program.window_dir(window_id) / "contributions") / assignment_id
    try:
        os.rename(staged, target)  # fails if the target exists and is not empty: the first submission stands
    except OSError as error:
        remove_staging(staged)
        raise ConfigError(f"assignment {assignment_id} of {window_id} already has a submission; one per "
                          "assignment") from error  # fmt: skip
    if program.state(window_id) != ACTIVE and not _counted(program, window_id, assignment_id):
        raise WindowStateError(f"{assignment_id} arrived after the seal of {window_id}: it is not counted "
                               "(arrived_after_seal); the next window replays its slice")  # fmt: skip
    return target


def _counted(program: Program, window_id: str, assignment_id: str) -> bool:
    """Whether the window's seal froze a submission of ``assignment_id`` (the rename beat the seal)."""
    from lit_psion.windows.validate import sealed_submissions

    return sealed_submissions(program, window_id).get(assignment_id) is not None


def contribute(root: Path, window_id: str, assignment_id: str, contributor: str | None = None,
               transform: Callable[[Batch], Batch] | None = None) -> Path:  # fmt: skip
    """The honest contributor: check the window is active and the assignment is this contributor's, train, submit.

    Raises:
        WindowStateError: the window is not active (planned: not yet open; sealed or later: too late, the
            slice is reassigned in the next window).
        ConfigError: the assignment is another contributor's.
    """
    program = Program(root)
    plan = program.plan(window_id)
    try:
        assignment = plan.assignment(assignment_id)
    except KeyError as error:
        raise ConfigError(str(error.args[0])) from error
    contributor = contributor or assignment.contributor
    if contributor != assignment.contributor:
        raise ConfigError(f"assignment {assignment_id} of {window_id} is {assignment.contributor}'s, not "
                          f"{contributor}'s")  # fmt: skip
    state = program.state(window_id)
    if state != ACTIVE:
        raise WindowStateError(f"{window_id} is {state!r}, not active: contributions are taken only while it is "
                               "active")  # fmt: skip
    if (program.window_dir(window_id) / "contributions" / assignment_id).exists():
        raise ConfigError(f"assignment {assignment_id} of {window_id} already has a submission; one per assignment")
    tensors, summary = train_adapter(program, plan, assignment, transform)
    staged = program.window_dir(window_id) / "contributions" / f".{assignment_id}.tmp-{os.getpid()}"
    remove_staging(staged)
    write_artifact(staged, plan, assignment, contributor, tensors, summary)
    return submit(program, window_id, assignment_id, staged)
