"""Reading a finished or paused run back: ``load_run(path)`` for commands, adapters and benchmarks.

``load_run`` takes a run directory (its pointed-to checkpoint, or the newest that verifies) or a
``step-NNNNNN`` checkpoint directory, verifies the checkpoint once and loads it. A sharded
checkpoint (the sharded strategy's) is read through its verified consolidated copy
(``ckpt consolidate``). ``LoadedRun.build``
re-creates the run's model and DataModule from its ``config.yaml`` (the same data-facts hand-over
as ``fit``) with the checkpoint's weights in the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import LightningArgumentParser

from lit_psion.checkpoint_io import load_verified
from lit_psion.consolidation import consolidated_for, verify_with_its_run
from lit_psion.core import RunLayout, RunRecord
from lit_psion.core.audit import changed_records, check_chain, receipted_checkpoints
from lit_psion.core.checkpoint import MANIFEST_FILE, RejectedCheckpoint, VerifiedCheckpoint, resolve_checkpoint
from lit_psion.core.contracts import DataFacts, ReplayData
from lit_psion.core.errors import CheckpointError, ConfigError, EvidenceError
from lit_psion.core.layout import no_run_or_checkpoint
from lit_psion.core.lock import lock_holder
from lit_psion.core.pointer import read_pointer


def add_data_facts_link(parser: LightningArgumentParser) -> None:
    """The one declared hand-over: the DataModule's ``data_facts()`` becomes the model's ``data_facts`` argument."""
    parser.link_arguments("data", "model.init_args.data_facts", compute_fn=_data_facts, apply_on="instantiate")


def _data_facts(data: L.LightningDataModule | None) -> DataFacts | None:
    return data.data_facts() if isinstance(data, ReplayData) else None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LoadedRun:
    """A run's layout and record, and its verified, loaded checkpoint (a bare checkpoint has no run)."""

    layout: RunLayout | None
    record: RunRecord | None
    checkpoint: VerifiedCheckpoint
    state: dict[str, Any] = dataclasses.field(repr=False)
    """The checkpoint dict (``state_dict`` holds the weights), loaded with ``weights_only=True``."""

    def check_records(self) -> None:
        """Refuse a run whose config.yaml, data manifest or tokenizer no longer match what run.json records (a
        checkpoint outside a run has none to check)."""
        for verdict in changed_records(self.layout) if self.layout is not None else ():
            raise verdict.refusal(self.layout.run_id, "restore it from a backup (`python -m lit_psion doctor "
                                  "RUN_DIR` shows every check)")  # fmt: skip

    def config(self) -> dict[str, Any]:
        """The run's resolved ``config.yaml``.

        Raises:
            ConfigError: a checkpoint outside a run directory carries no config.
        """
        if self.layout is None:
            raise ConfigError(f"checkpoint {str(self.checkpoint.path)!r} is not inside a run directory, so there is "
                              "no config.yaml to rebuild its model from; give the run directory")  # fmt: skip
        self.check_records()  # the model is rebuilt from what the run recorded, or not at all
        try:
            config = yaml.safe_load(self.layout.config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise EvidenceError(f"run {self.layout.run_id!r}: {self.layout.config.name} cannot be read "
                                f"({type(error).__name__}); restore it from a backup") from error  # fmt: skip
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            raise EvidenceError(f"run {self.layout.run_id!r}: {self.layout.config.name} holds no model section; "
                                "restore it from a backup")  # fmt: skip
        return config

    def model_class(self) -> str:
        """The class path of the model the run trained (``lit_psion.models.MosaicLM``), from its config."""
        return str(self.config()["model"].get("class_path", ""))

    def build(self, check_data: Callable[[Any], None] | None = None) -> tuple[L.LightningModule, L.LightningDataModule]:
        """The run's model (with the checkpoint's weights, in eval mode) and its DataModule; ``check_data`` sees the
        DataModule before the weights load (a tokenizer that is not the run's would make them not fit the model)."""
        config = self.config()
        parser = LightningArgumentParser(parser_mode="omegaconf", exit_on_error=False)
        parser.add_lightning_class_args(L.LightningModule, "model", subclass_mode=True)
        parser.add_lightning_class_args(L.LightningDataModule, "data", subclass_mode=True)
        add_data_facts_link(parser)
        parsed = parser.parse_object({"model": config["model"], "data": config["data"]})
        init = parser.instantiate_classes(parsed)
        if check_data is not None:
            check_data(init.data)
        try:
            init.model.load_state_dict(self.state["state_dict"])
        except RuntimeError as error:  # config.yaml matches run.json, so the weights are not this run's model's
            raise CheckpointError(f"checkpoint {str(self.checkpoint.path)!r} does not fit the model its run's "
                                  f"config builds ({str(error).splitlines()[0]}); give a checkpoint of this "
                                  "run") from error  # fmt: skip
        return init.model.eval(), init.data


def load_run(location: str | Path, map_location: Any = None, exact: bool = False) -> LoadedRun:
    """The run at ``location`` (a run directory, or a checkpoint directory inside a run or on its own), loaded.

    A run directory gives its pointed-to checkpoint, or (as ``--ckpt_path last``) the newest that verifies; with
    ``exact`` (a base model, whose digest what is trained on it records), the pointed-to one or nothing.

    Raises:
        ConfigError: ``location`` is neither a run directory nor a checkpoint directory.
        CheckpointError: no checkpoint verifies.
        EvidenceError: the run's receipt chain does not verify against its anchors (exit 5).
    """
    location = Path(location)
    if RunLayout.of(location).is_run():
        layout = RunLayout.of(location)
        skipped: list[RejectedCheckpoint] = []
        checkpoint = resolve_checkpoint(layout, skipped, quiet=exact, receipted=receipted_checkpoints(layout))
        if exact and skipped:
            raise CheckpointError(f"run {layout.run_id!r}: {skipped[0].path.name} does not verify "
                                  f"({skipped[0].reason}); restore it, or give the checkpoint directory to use "
                                  "explicitly")  # fmt: skip
        if exact and ((pointer := read_pointer(layout)) is None or pointer.checkpoint != checkpoint.path.name):
            named = "no checkpoint" if pointer is None else pointer.checkpoint
            raise CheckpointError(f"the pointer of run {layout.run_id!r} names {named}, but a resume would load "
                                  f"{checkpoint.path.name}; give the checkpoint directory to use "
                                  "explicitly")  # fmt: skip
    elif (location / MANIFEST_FILE).is_file():
        checkpoint = verify_with_its_run(location)  # inside a run: written by it, the one its receipt recorded
        layout = RunLayout.of(location.parent.parent)
        inside = location.resolve().parent in (layout.checkpoints, layout.consolidated)  # layouts are resolved
        layout = layout if layout.is_run() and inside else None
    elif not (location.exists() or location.is_symlink()):
        raise ConfigError(no_run_or_checkpoint(location))
    else:
        raise ConfigError(f"{str(location)!r} is neither a run directory (with run.json) nor a checkpoint "
                          "directory (step-NNNNNN with manifest.json)")  # fmt: skip
    record = RunRecord.load(layout) if layout is not None else None
    if layout is not None and record is not None:
        _refuse_a_broken_chain(layout, record)
    if checkpoint.sharded and layout is not None:
        checkpoint = consolidated_for(layout, checkpoint)  # one model, gathered from the shards and verified
    state = load_verified(checkpoint, map_location)
    return LoadedRun(layout=layout, record=record, checkpoint=checkpoint, state=state)


def _refuse_a_broken_chain(layout: RunLayout, record: RunRecord) -> None:
    """The run's receipt chain held to its anchors (run.json's head, every checkpoint's head, the seal), as ``receipts
    verify`` and a resume hold it: a run whose history was cut, appended to or re-hashed is not read back as if whole.
    A torn last line is what a kill leaves (a resume mends it), and a run a fit still writes changes under the reader:
    both are read as far as the chain verifies. A run that kept no receipts has none to check."""
    if record.receipts_head is None and not (layout.receipts.exists() or layout.receipts.is_symlink()):
        return
    if lock_holder(layout.run_dir) is not None:
        return  # its checkpoints were held to the receipts that verify (receipted_checkpoints)
    check_chain(layout, record, before_torn_tail=True)
