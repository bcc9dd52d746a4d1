"""ReplayDataModule: the base every lit_psion DataModule shares (seed, batch size, workers, cache, loaders, state).

A subclass builds its data and says what it knows; the base serves it replay-safely:

- :meth:`ReplayDataModule.prepare` builds the data once (the subclass's :meth:`~ReplayDataModule._prepare`),
  refuses data too small for the settings, and keeps the manifest;
- the training loader replays the ``(seed, epoch)`` order from a cursor; validation, test and predict
  read the validation split in order, every sample once;
- ``batch_size`` is the global batch: under data parallelism (learnt from the trainer in ``setup``) each
  rank trains on its contiguous slice of each global batch, the cursor stays global, and the global
  batches are those of a single process, step for step (a world size that does not divide ``batch_size``
  is refused at setup, exit 2); every rank reads the whole validation split;
- :meth:`~ReplayDataModule.on_after_batch_transfer` marks each training batch's cursor consumed, so a
  checkpoint saves exactly what was trained on;
- ``state_dict`` carries the manifest, and ``load_state_dict`` refuses a checkpoint written against
  other data (:class:`~lit_psion.core.errors.DataManifestMismatch`, exit 3); ``setup`` refuses it
  already, before Lightning restores the model's weights (a vocabulary change would fail there first).

Bad settings raise :class:`~lit_psion.core.errors.DataConfigError` (exit 2) from the constructor, all
named together; bad data raises :class:`~lit_psion.core.errors.DataError` (exit 3) from ``prepare``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch
import yaml
from torch.utils.data import Dataset

from lit_psion.core.contracts import DataFacts, Manifest
from lit_psion.core.errors import DataConfigError, DataError, DataManifestMismatch
from lit_psion.core.layout import CONFIG_FILE, in_a_run
from lit_psion.core.manifest import RecordManifest
from lit_psion.core.run import run_context
from lit_psion.datamodules.replay import Cursor, ReplayDataLoader, ReplaySampler, replay_loader
from lit_psion.datamodules.token_cache import default_cache_dir

Split = Literal["train", "val", "test"]


def positive_integers(**settings: Any) -> list[str]:
    """A problem for each setting that is not a positive integer, quoting its value."""
    return [f"{name} must be a positive integer, got {value!r}"
            for name, value in settings.items() if not isinstance(value, int) or value < 1]  # fmt: skip


def _not_a_directory(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a directory (the cache could not go there)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


class ReplayDataModule(L.LightningDataModule):
    """Replay-safe loaders, consumed-cursor marking and manifest state over a subclass's data.

    A subclass implements :meth:`_prepare` (build or load the data, return its manifest),
    :meth:`_dataset` (a split's dataset of whole batches: ``dataset[indices]`` is a batch dict with
    ``sample_ids``) and :meth:`data_facts`, calls :meth:`_refuse_bad_settings` at the end of its constructor,
    and may override :meth:`_describe_change` (how a saved manifest differs from the current one).

    Args:
        batch_size: Samples per training step across all ranks (the global batch; each rank trains on
            ``batch_size // world_size`` of them). Validation batches are at most this.
        seed: Seed of the sample order (and, in subclasses, of the data).
        num_workers: DataLoader worker processes.
        cache_dir: Where built data is cached (default ``$LIT_PSION_CACHE`` or ``~/.cache/lit_psion``).
    """

    data_name: ClassVar[str] = "data"
    """How a refused resume names this data: ``the {data_name} changed since it was written``."""
    more_data_hint: ClassVar[str] = "lower --data.batch_size or add data"
    test_split_hint: ClassVar[str] = "it generates training and validation data only"
    """Why there is no test split, or how to get one (the line ``test`` is refused with)."""
    """The fix a too-small-data error suggests."""

    def __init__(self, *, batch_size: int, seed: int, num_workers: int = 0, cache_dir: str | None = None) -> None:
        super().__init__()
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.cache_dir = default_cache_dir(cache_dir)
        self.manifest: Manifest | None = None
        self._train_loader: ReplayDataLoader | None = None
        self._rank, self._world_size = 0, 1  # this process's place among the data-parallel ranks (set in setup)

    def _refuse_bad_settings(self, *problems: str) -> None:
        """Raise one DataConfigError naming ``problems`` and any bad shared setting (exit 2)."""
        found = [*positive_integers(batch_size=self.batch_size), *problems]
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            found.append(f"num_workers must be 0 or more, got {self.num_workers!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            found.append(f"seed must be a whole number in [0, 2**63), got {self.seed!r}")
        if (taken := _not_a_directory(self.cache_dir)) is not None:
            found.append(f"cache_dir {str(self.cache_dir)!r} cannot hold the cache: {str(taken)!r} is not a directory; "
                         "give a directory with --data.cache_dir or LIT_PSION_CACHE")  # fmt: skip
        else:
            try:  # made now, not first by a tokenizer's or a token stream's write deep inside the data's build
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                found.append(f"cache_dir {str(self.cache_dir)!r} cannot be created ({error.strerror or error}); give "
                             "a directory this process can write with --data.cache_dir or LIT_PSION_CACHE")  # fmt: skip
        if found:  # each names its setting as the command line does
            raise DataConfigError("; ".join(f"data.{problem}" for problem in found))

    # -- what a subclass provides ------------------------------------------------------------

    def _prepare(self) -> Manifest:
        """Build (or load from cache) the data; return its manifest. Raise DataError for bad data."""
        raise NotImplementedError

    def _dataset(self, split: Split) -> Dataset:
        """The dataset of ``split`` (after :meth:`prepare`): ``dataset[indices]`` is one batch dict."""
        raise NotImplementedError

    def data_facts(self) -> DataFacts:
        """What a model must know of this data to be built (vocabulary, context, state size)."""
        raise NotImplementedError

    def _describe_change(self, saved: dict[str, Any]) -> str:
        """How the saved manifest record differs from the current manifest (a RecordManifest by default)."""
        return ", ".join(self.prepare().changed_keys(saved)) + " differ"

    # -- data -----------------------------------------------------------------------------

    def prepare(self) -> Manifest:
        """Build the data and its manifest once (later calls return the same manifest).

        Raises:
            DataError: The data is missing, empty, or too small for the settings.
        """
        if self.manifest is None:
            try:
                manifest = self._prepare()
                self._require_samples()
            except DataError as error:
                error.data_module = self  # a resume's refusal can say what changed (lit_psion.runs)
                raise
            self.manifest = manifest
        return self.manifest

    def change_before_preparing(self, saved: dict[str, Any]) -> str | None:
        """What differs between the manifest ``saved`` (a checkpoint's) and the sources and settings this module
        names, read without preparing them: data that fails to prepare (too small for a batch) on a resume is then
        refused as changed data. None where nothing differs, or this data cannot say before it is prepared."""
        return None

    def samples(self, split: Split) -> Dataset:
        """The samples of ``split`` (prepared first), for code that reads them outside a Trainer."""
        self.prepare()
        return self._dataset(split)

    def _require_samples(self) -> None:
        """Refuse data too small for one full training batch or one validation sample."""
        samples = len(self._dataset("train"))
        if samples < self.batch_size:
            raise DataError(f"batch_size {self.batch_size} is larger than the {samples} training samples; "
                            f"{self.more_data_hint}")  # fmt: skip
        if len(self._dataset("val")) < 1:
            raise DataError(f"the validation split has no samples; {self.more_data_hint}")
        if self.has_test_split() and len(self._dataset("test")) < 1:
            raise DataError(f"the test split has no samples; {self.more_data_hint}")

    # -- Lightning hooks ------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        self.prepare()
        if self.trainer is None:
            return
        if stage == "fit":  # only the training loader slices
            self._slice_global_batches(self.trainer.global_rank, self.trainer.world_size)
        self._refuse_a_checkpoint_of_other_data(self.trainer)

    def _slice_global_batches(self, rank: int, world_size: int) -> None:
        """Train on slice ``rank`` of ``world_size`` of each global batch (contiguous, equal slices).

        Uneven slices are refused rather than handled: DDP averages the ranks' gradients with equal weight,
        so unequal slices would need every model's loss to become sample-weighted.

        Raises:
            DataConfigError: ``world_size`` does not divide the global batch (exit 2).
        """
        if self.batch_size % world_size:
            lower, upper = self.batch_size // world_size * world_size, (self.batch_size // world_size + 1) * world_size
            nearest = f"{lower} or {upper}" if lower else f"{upper}"
            raise DataConfigError(
                f"batch_size {self.batch_size} (the global batch) cannot be split evenly over world size {world_size}; "
                f"use a multiple of {world_size} (--data.batch_size {nearest})"
            )
        self._rank, self._world_size = rank, world_size

    def _refuse_a_checkpoint_of_other_data(self, trainer: L.Trainer) -> None:
        """Refuse resuming from a checkpoint trained on other data before any of its weights are restored.

        Lightning restores the model's weights before the datamodule's state
        (``_CheckpointConnector._restore_modules_and_callbacks``: ``restore_model`` then
        ``restore_datamodule``), so a data change that reshapes the model (a character vocabulary
        that gained a character) would fail there as a size mismatch. ``setup`` runs before both: the
        verified checkpoint manifest the run resumes from records the data manifest digest, and only when
        it differs is the checkpoint loaded (from the bytes already verified), to name what changed.

        Raises:
            DataManifestMismatch: The fit resumes from a checkpoint of other data or settings.
        """
        run = run_context(trainer)
        recorded = run.resume_manifest.data_manifest_digest if run.resume_manifest is not None else None
        if run.resume_from is None or recorded in (None, self.prepare().digest):
            return
        saved = trainer.strategy.load_checkpoint(run.resume_from).get(type(self).__qualname__)
        self.load_state_dict(saved or {})
        raise DataManifestMismatch(
            f"refusing to load the checkpoint: it was trained on {self.data_name} {recorded[:12]}..., not this "
            f"data's {self.prepare().digest[:12]}...; restore the original data and settings or start a new run "
            f"without --ckpt_path{self._own_config_hint()}"
        )

    def train_dataloader(self) -> ReplayDataLoader:
        """The training split in the ``(seed, epoch)`` order: this rank's slice of each full global batch.

        Resumable from its (global) cursor, at any world size that divides the batch size.
        """
        dataset = self._dataset("train")
        sampler = ReplaySampler(len(dataset), self.seed)
        self._train_loader = replay_loader(dataset, sampler, self.batch_size, True, self.num_workers, self.seed,
                                           rank=self._rank, world_size=self._world_size)  # fmt: skip
        return self._train_loader

    def val_dataloader(self) -> ReplayDataLoader:
        """The validation split in order, every sample once (the last batch may be partial).

        Every rank reads all of it: the metrics are then a single process's exactly (torchmetrics' sync
        of identical states leaves a mean unchanged), at the cost of repeating the evaluation per rank.
        """
        return self._in_order("val")

    def _in_order(self, split: Split) -> ReplayDataLoader:
        dataset = self._dataset(split)
        sampler = ReplaySampler(len(dataset), self.seed, shuffle=False)
        return replay_loader(dataset, sampler, min(self.batch_size, len(dataset)), False, self.num_workers, self.seed)

    def has_test_split(self) -> bool:
        """Whether the data holds out a test split (a subclass that can says so; by default it cannot)."""
        return False

    def test_dataloader(self) -> ReplayDataLoader:
        """The test split in order, every sample once; data without one is refused, never swapped for validation.

        Raises:
            DataConfigError: The data has no test split (exit 2).
        """
        if not self.has_test_split():
            raise DataConfigError(f"{type(self).__name__} has no test split: {self.test_split_hint}; or run "
                                  "`validate` for the validation split")  # fmt: skip
        return self._in_order("test")

    def predict_dataloader(self) -> ReplayDataLoader:
        """The validation split (there is no separate predict split)."""
        return self.val_dataloader()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """A batch already on a CPU device as it is: Lightning's transfer walks every value to move it nowhere
        (about 20 us a step, a cost the plain loop does not pay: benchmarks/throughput.py)."""
        if device.type == "cpu" and isinstance(batch, dict) and all(
                not isinstance(value, torch.Tensor) or value.device.type == "cpu" for value in batch.values()):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Mark a training batch's cursor consumed.

        This hook runs for the batch about to be trained on (after Lightning's prefetch), so the cursor
        saved in a checkpoint is exactly what was consumed.
        """
        training = self.trainer is not None and self.trainer.training
        if training and self._train_loader is not None and isinstance(batch, dict) and "cursor" in batch:
            self._train_loader.mark_consumed(Cursor(*batch["cursor"]))
        return batch

    def state_dict(self) -> dict[str, Any]:
        manifest = self.prepare()
        return {"manifest": manifest.to_json_dict(), "manifest_digest": manifest.digest}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse a checkpoint whose saved manifest is not this data's (exit 3).

        Raises:
            DataManifestMismatch: The data or its settings changed since the checkpoint was written.
        """
        current = self.prepare()
        saved = state_dict.get("manifest")
        if saved is None or state_dict.get("manifest_digest") == current.digest:
            return
        raise DataManifestMismatch(
            f"refusing to load the checkpoint: the {self.data_name} changed since it was written "
            f"({self._describe_change(saved)}); {self._restore_hint(saved)}"
        )

    def _restore_hint(self, saved: dict[str, Any]) -> str:
        """How to give the checkpoint its data again: the flags of the settings it recorded, where they are plain
        values (a generator's ``n_test: 8`` is ``--data.n_test 8``)."""
        manifest = self.prepare()  # a generator's record names its settings; a corpus names its own (CorpusDataModule)
        changed = manifest.changed_keys(saved) if isinstance(manifest, RecordManifest) else []
        settings = inspect.signature(type(self)).parameters  # a record's other keys (a tokenizer digest) are no flag
        values = {key: saved[key] if key in saved else settings[key].default for key in changed if key in settings}
        plain = [key for key, value in values.items() if isinstance(value, int | float | str)]  # (a record leaves
        # out a setting at its default: the default it had)
        flags = [f"--data.{key} {str(values[key]).lower() if isinstance(values[key], bool) else values[key]}"
                 for key in plain]  # fmt: skip
        others = [key for key in values if key not in plain]  # (nested: no one flag gives them)
        also = f"; it also differs in {', '.join(others)}, which the run's config.yaml holds" if others else ""
        fitting = self.trainer is None or self.trainer.state.fn == "fit"
        if flags:
            return f"give the settings it was trained with ({' '.join(flags)}{also}){self._own_config_hint()}"
        return ("restore the original data and settings or start a new run without --ckpt_path" if fitting
                else "evaluate it on the data and settings it was trained with") + self._own_config_hint()  # fmt: skip

    def _own_config_hint(self) -> str:
        """Where the run that holds the checkpoint keeps its config, which gives it its data (and model) at once:
        a preset of the same model class with other data (another system of a graph core) differs in both."""
        resumed = run_context(self.trainer).resume_from if self.trainer is not None else None
        place = in_a_run(Path(resumed)) if resumed is not None else None
        config = place[0] / CONFIG_FILE if place is not None else None
        if config is None or not config.is_file() or self.given_the_data_of(config):
            return ""  # (that config, or one with its data, was given: the data it names changed since)
        return f", or pass that run's own config (--config {config})"

    def given_the_data_of(self, config: Path) -> bool:
        """Whether this fit's config has the data section of ``config`` (a run's own): naming it would not help."""
        given = run_context(self.trainer).config_yaml if self.trainer is not None else None
        try:
            return given is not None and _data_section(given) == _data_section(config.read_text())
        except (OSError, UnicodeDecodeError):
            return False


def _data_section(config_yaml: str) -> Any:
    try:
        config = yaml.safe_load(config_yaml)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None
    return config.get("data") if isinstance(config, dict) else None
