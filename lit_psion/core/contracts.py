"""The contracts between lit_psion's parts, as small runtime-checkable Protocols (SPEC §1).

A callback, strategy or command that needs something of a model or DataModule checks it with
``isinstance(obj, Contract)`` against one of these, never with ``getattr(obj, "name", None)``.
Framework-free: tensors and batches are ``Any`` here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, runtime_checkable

from lit_psion.core.digest import sha256_json

STAGES = ("pretrain", "finetune", "growth", "session", "window")
"""The stages a run can be (receipts carry the run's stage as ``stage_id``)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DataFacts:
    """What a model must know of its data to be built: handed over by the CLI in one declared place.

    A model takes ``data_facts: DataFacts | None = None`` in its constructor; ``python -m lit_psion``
    links it from the DataModule's :meth:`ReplayData.data_facts`. ``None`` fields say "this data has no such fact".
    """

    vocab_size: int | None = None
    block_size: int | None = None
    state_dim: int | None = None
    window: int | None = None
    """States per sample of dynamics data: the most history a position can have."""
    tokenizer_digest: str | None = None
    """The sha256 of the data's ``tokenizer.json``: what its token ids mean."""


def model_signature(family: str, base: str | None = None, **config: Any) -> str:
    """SPEC §3's model_signature: sha256 of the canonical model config and the base checkpoint digest.

    Args:
        family: The model class (``DecoderLM``, ``AdapterLM``, ...).
        base: The digest of the checkpoint the model is built on (None for a model trained from scratch).
        config: Everything that decides the model's shape, as plain JSON-able values.
    """
    return sha256_json({"family": family, "base": base, **config})


class Manifest(Protocol):
    """A data manifest: a digest and its JSON record (``DataManifest``, ``RecordManifest``)."""

    @property
    def digest(self) -> str: ...

    def to_json_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class SignedModel(Protocol):
    """A model that names its shape and base by a signature (checked on resume, adapters, sessions)."""

    @property
    def model_signature(self) -> str: ...


@runtime_checkable
class SettingsSigned(Protocol):
    """A signed model that says which of its settings (keys under ``model.init_args``, or sections of them) its
    signature is made of, so a refusal names only those that differ (never a learning rate)."""

    signed_settings: ClassVar[tuple[str, ...]]


def signed_settings(model: Any) -> tuple[str, ...] | None:
    """The settings ``model``'s signature is made of, or None when its class does not say (then any may be). A
    subclass says for itself: one that inherits the list may sign settings of its own that it does not name."""
    said = isinstance(model, SettingsSigned) and "signed_settings" in vars(type(model))
    return model.signed_settings if said else None


@runtime_checkable
class Staged(Protocol):
    """A model or callback that says which stage its run is (``pretrain``, ``finetune``, ``growth``, ...)."""

    stage: ClassVar[str]


@runtime_checkable
class RateNamed(Protocol):
    """A model whose learning rate one command-line flag sets (``--model.init_args.optimizer.lr``), which advice
    after a divergence names."""

    lr_flag: ClassVar[str]


def lr_flag(module: Any) -> str:
    """The flag that sets ``module``'s learning rate, or words for it when the module does not say."""
    return module.lr_flag if isinstance(module, RateNamed) else "the model's own setting"


@runtime_checkable
class TransactionalModule(Protocol):
    """A module a transactional strategy can measure: the training loss on a batch, without logging.

    A module whose ``transaction_loss`` depends on nothing but its parameters, its buffers, the batch
    and the RNG state may say so with a class attribute ``transaction_loss_is_pure = True`` (see
    :data:`PURE_TRANSACTION_LOSS`): a strategy measuring on a buffer of batches then takes a batch's
    ``pre_loss`` from the previous step's ``post_loss`` while no parameter or buffer has changed since.
    Each class declares it for itself (a subclass inherits no claim), and only a loss that runs no
    collective may (ranks must not disagree on whether to measure). "Changed" is what torch's version
    counters see: an in-place op on a parameter or buffer; a write through ``.data``, a NumPy/DLPack
    view or a raw ``torch.distributed`` collective between steps is not seen, so a module that
    changes its weights that way must not declare it.
    """

    def transaction_loss(self, batch: Any) -> Any: ...


@runtime_checkable
class SkipListing(Protocol):
    """A strategy that leaves the batches on its run's skip list (``skip_list.json``) out of training: the
    transactional ones, which list the batches of the steps they roll back."""

    skip_list: Any


PURE_TRANSACTION_LOSS = "transaction_loss_is_pure"
"""The class attribute by which a :class:`TransactionalModule` says its loss is a function of its weights,
the batch and the RNG state alone (no other state that can change between steps)."""


@runtime_checkable
class RecordWatcher(Protocol):
    """A callback that reflects the run's record elsewhere (the W&B summary): told once run.json holds a fit's
    final status, after every other callback's ``on_exception`` or ``on_fit_end`` has written its part."""

    def on_run_recorded(self, trainer: Any) -> None: ...


@runtime_checkable
class PauseCheckpointer(Protocol):
    """A callback that checkpoints the step a SIGTERM stops a fit after: told before the ``paused`` receipt is
    written (Lightning stops at a step boundary, but may check the signal after the step's own checkpoint hook)."""

    def checkpoint_the_pause(self, trainer: Any) -> None: ...


@runtime_checkable
class HeadWatcher(Protocol):
    """A callback that records the receipt chain's head outside the log (run.json, the W&B summary): told on rank 0
    once a checkpoint's durable receipt is appended and synced, so the head it records covers that receipt (the
    manifest digest and weights digest of the checkpoint a resume would load), not the head before it."""

    def on_checkpoint_receipted(self, trainer: Any) -> None: ...


@runtime_checkable
class StateNormed(Protocol):
    """A module whose state norm a transactional strategy bounds (seed 000's state_norm trigger)."""

    def transaction_state_norm(self) -> float: ...


@runtime_checkable
class ReplayData(Protocol):
    """A DataModule whose data is pinned by a manifest and replays exactly from a cursor.

    ``data_facts`` is a method, not a property: ``isinstance`` on a runtime-checkable Protocol
    reads every member, and knowing the vocabulary can mean training a tokenizer.
    """

    manifest: Manifest | None

    def data_facts(self) -> DataFacts: ...


@runtime_checkable
class TokenizedData(Protocol):
    """A DataModule with a tokenizer (``encode``/``decode``) the run keeps as ``tokenizer.json``."""

    tokenizer: Any

    def tokenizer_json(self) -> str | None: ...


@runtime_checkable
class ProbeData(Protocol):
    """A DataModule that draws probe batches by key without touching the training order (growth)."""

    def sample_batch(self, key: int, batch_size: int | None = None) -> Any: ...


@runtime_checkable
class Promotable(Protocol):
    """A candidate a promotion gate can score against its base on held-out data."""

    @property
    def model_signature(self) -> str: ...

    @property
    def base_digest(self) -> str: ...

    def held_out_loss(self, loader: Any, adapters: bool) -> float: ...


@runtime_checkable
class RollbackAware(Protocol):
    """A strategy that may undo a step; ``last_decision`` is ``commit``, ``rollback`` or None."""

    last_decision: str | None


@runtime_checkable
class Growable(Protocol):
    """A model whose sparse structure a growth planner edits (GraphCore): the graph (``nn.graph.Graph``)
    whose operator it edits, the barrier (``nn.barrier.Barrier``) that bounds it, and ``L_task``."""

    @property
    def growable(self) -> Any: ...

    @property
    def barrier(self) -> Any: ...

    def task_loss(self, batch: Any) -> Any: ...


@runtime_checkable
class Resumable(Protocol):
    """An object whose state a checkpoint carries (a replay loader's cursor, a callback's RNG state)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


@runtime_checkable
class MembershipAware(Protocol):
    """A strategy that trains as a mesh with membership epochs; checkpoints record its membership."""

    def membership_record(self) -> dict[str, Any] | None: ...

    def stop_reason(self) -> str | None:
        """Why the worker stopped for the mesh (``membership_changed``, ``drained``), if it did."""
        ...
