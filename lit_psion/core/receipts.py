"""Typed receipt bodies (seed 004 "Canonical Train Receipts", SPEC §3).

Bodies are frozen dataclasses registered by kind, one line each; later families (transactions,
membership, adapter windows, promotion) and a user's own evidence register the same way. The
envelope, the hash chain and its verification are in :mod:`lit_psion.core.chain`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, ClassVar

from lit_psion.core.errors import ConfigError

RECEIPT_KINDS: dict[str, type[ReceiptBody]] = {}


def register_receipt(cls: type[ReceiptBody]) -> type[ReceiptBody]:
    """Register a receipt body class under its ``kind``; a kind may be registered once.

    Raises:
        ConfigError: ``cls`` is not a :class:`ReceiptBody` dataclass (its fields would not be written), its ``kind`` is
            not a non-empty string, or the kind is registered already.
    """
    name = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"
    if not (isinstance(cls, type) and issubclass(cls, ReceiptBody) and dataclasses.is_dataclass(cls)
            and "__dataclass_fields__" in vars(cls)):  # fmt: skip
        raise ConfigError(f"@register_receipt on {name}: a receipt body is a dataclass subclassing ReceiptBody; put "
                          "@register_receipt above @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)")
    if not isinstance(cls.kind, str) or not cls.kind.strip():
        raise ConfigError(f"@register_receipt on {name}: its kind is {cls.kind!r}; give it a name of its own "
                          "(kind: ClassVar[str] = \"my_evidence\")")  # fmt: skip
    if cls.kind in RECEIPT_KINDS:
        holder = RECEIPT_KINDS[cls.kind]
        raise ConfigError(f"receipt kind {cls.kind!r} is already registered by {holder.__module__}."
                          f"{holder.__qualname__}; give {cls.__qualname__} a kind name of its own")  # fmt: skip
    RECEIPT_KINDS[cls.kind] = cls
    return cls


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReceiptBody:
    """Base of every receipt body. Subclasses set ``kind`` and add their fields."""

    kind: ClassVar[str] = ""

    def to_json_dict(self) -> dict[str, Any]:
        """The body's fields as JSON data. A body of scalars and tuples of scalars (every step's receipt) is read
        field by field; anything deeper goes through ``dataclasses.asdict``, which copies it."""
        values = {name: getattr(self, name) for name in _field_names(type(self))}
        if all(_scalar(value) or (type(value) is tuple and all(map(_scalar, value))) for value in values.values()):
            return values
        return dataclasses.asdict(self)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _scalar(value: Any) -> bool:
    return type(value) in _SCALARS


@functools.cache
def _field_names(cls: type[ReceiptBody]) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


def body_problem(cls: type[ReceiptBody], body: dict[str, Any]) -> str | None:
    """What makes ``body`` (a parsed receipt's) not a ``cls``: a field whose value is not of the field's type, as
    JSON gives it back (a list for a tuple, an int for a float), or None. A type this check does not know (a user's
    own body may use any) is left to the class."""
    hints = _field_types(cls)
    for name, value in body.items():
        if name in hints and not _fits(value, hints[name]):
            shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
            return f"field {name!r} is {shown}, not {_type_name(hints[name])}"
    return None


def read_back_problem(cls: type[ReceiptBody], body: dict[str, Any]) -> str | None:
    """What keeps ``body`` (a parsed receipt's) from reading back as a ``cls``: the class refusing it (an unexpected
    field, such as one declared ``init=False``; a ``__post_init__`` check that raises, whatever it raises) or a field
    of another type (:func:`body_problem`); None when it reads back."""
    try:
        cls(**body)
    except RecursionError:
        return "nested too deeply"
    except TypeError as error:
        return str(error)
    except Exception as error:  # a user's own class may raise anything: its body does not read back
        return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
    return body_problem(cls, body)


@functools.cache
def _field_types(cls: type[ReceiptBody]) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation this process cannot resolve: leave the body to its class
        return {}
    return {field.name: hints[field.name] for field in dataclasses.fields(cls) if field.name in hints}


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint in (int, float, bool, str):
        numeric = {int: (int,), float: (int, float)}.get(hint)
        return isinstance(value, numeric) and not isinstance(value, bool) if numeric else type(value) is hint
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(item, arg) for item, arg in zip(value, args, strict=True))
        return all(_fits(item, args[0] if args else Any) for item in value)
    if origin is dict:
        key, item = args or (Any, Any)
        return isinstance(value, dict) and all(_fits(k, key) and _fits(v, item) for k, v in value.items())
    return True


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TrainingRunReceipt(ReceiptBody):
    """One run (or run stage) starting, pausing, resuming or ending."""

    kind: ClassVar[str] = "training_run"
    stage_id: str
    event: str
    """``started``, ``resumed``, ``paused``, ``completed`` or ``failed``."""
    status: str
    config_digest: str | None
    data_manifest_digest: str | None
    model_signature: str | None
    checkpoint_lineage: tuple[str, ...] = ()
    outcome: str | None = None
    changed_settings: tuple[tuple[str, Any, Any], ...] = ()
    """On ``resumed``: ``[key, before, now]`` for each model, data or step setting the run's config.yaml had
    otherwise (a batch size, a schedule, ``trainer.max_steps``)."""


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TransactionReceipt(ReceiptBody):
    """One optimizer step's transaction: committed, or rolled back with reason codes."""

    kind: ClassVar[str] = "transaction"
    stage_id: str
    step: int
    batch_digest: str
    pre_loss: float | None
    post_loss: float | None
    grad_norm: float | None
    decision: str
    """``commit`` or ``rollback``."""
    reasons: tuple[str, ...] = ()
    action: str | None = None
    """After a rollback: ``skipped`` (skip-listed batch), ``restored:step-NNNNNN`` (last durable checkpoint
    restored, offending batches skip-listed), ``skip_listed_no_checkpoint``, ``scaler_overflow`` (mixed
    precision's grad scaler skipped the step; not counted as divergence), ``stopped`` (too many in a row,
    the run ends with a TransactionError); None otherwise."""
    batch_digests: tuple[str, ...] | None = None
    """On a rollback, every rank's batch digest in rank order (``batch_digest`` is rank 0's); None on a commit
    (and in receipts written before it was recorded)."""


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PolicyPromotionReceipt(ReceiptBody):
    """A candidate revision (e.g. a fine-tuned adapter) promoted over, or held behind, the previous one."""

    kind: ClassVar[str] = "policy_promotion"
    stage_id: str
    previous_revision: str
    candidate_revision: str
    split: str
    scores: dict[str, float]
    decision: str
    """``promote`` or ``hold``."""
    reasons: tuple[str, ...] = ()
    accepted_artifacts: tuple[str, ...] = ()
    """For an adapter window: the sha256 of every accepted contribution the candidate aggregates."""


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WindowStateReceipt(ReceiptBody):
    """An adapter window moving to its next state (``planned`` -> ``active`` -> ``sealed`` -> ``scored`` ->
    ``reconciled``; docs/windows.md)."""

    kind: ClassVar[str] = "window_state"
    window_id: str
    previous: str | None
    """None for the receipt that plans the window."""
    state: str
    plan_digest: str
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What the transition froze: the submissions at the seal, the disposition counts when scored."""


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AdapterContributionReceipt(ReceiptBody):
    """One contribution to an adapter window: its submission as received, then the validator's disposition."""

    kind: ClassVar[str] = "adapter_contribution"
    window_id: str
    assignment_id: str
    contributor: str
    event: str
    """``submitted`` (the bytes as received, before the seal) or ``disposed`` (the validator's verdict)."""
    input_revision: str
    """The window's input revision (what the contribution had to be trained on)."""
    slice_index: int
    slice_digest: str
    """The assigned slice's digest."""
    artifact_digest: str | None
    """sha256 of ``adapter.safetensors`` (None when nothing arrived)."""
    metadata_digest: str | None
    """sha256 of ``contribution.json``: the claimed revision, slice, shape and execution summary."""
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The contributor's execution summary (steps, tokens, first and last loss, seconds) as it claimed it."""
    disposition: str | None = None
    """``accepted``, ``quarantined``, ``rejected`` or ``replay_required`` (``disposed`` only)."""
    reasons: tuple[str, ...] = ()
    evidence: dict[str, float | str] = dataclasses.field(default_factory=dict)
    """The validator's measurements: ``delta_norm``, ``median_norm``, ``held_out_loss``, ``input_loss``; and for a
    duplicate, ``same_delta_as``: the assignment whose update it repeats."""
    aggregation_eligible: bool = False


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AdapterAggregationReceipt(ReceiptBody):
    """How a scored window's accepted contributions were combined into a candidate revision."""

    kind: ClassVar[str] = "adapter_aggregation"
    window_id: str
    rule: str
    """``exact_delta_tokens_v1``: dW = sum_k p_k (alpha_k / r_k) B_k A_k, p_k by tokens trained."""
    input_revision: str
    accepted_artifacts: tuple[str, ...]
    weights: dict[str, float]
    """Assignment id -> p_k."""
    candidate_revision: str | None
    """The manifest sha256 of the merged candidate checkpoint (None when nothing was accepted)."""
    candidate_checkpoint: str | None
    """Its directory, relative to the program root."""
    stacked_adapter_digest: str | None
    """sha256 of the stacked adapter (rank sum r_k, exact) written beside it."""


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AdapterExportReceipt(ReceiptBody):
    """An adapter exported, or merged into its base, with the measured effect of merging."""

    kind: ClassVar[str] = "adapter_export"
    action: str
    """``export`` or ``merge``."""
    adapter_digest: str
    base_checkpoint_digest: str
    output_digest: str
    max_abs_logit_diff: float | None = None
    """Merged against unmerged model on the fixed probe batch (``merge`` only)."""


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConsolidationReceipt(ReceiptBody):
    """A sharded checkpoint gathered into one safetensors model (``ckpt consolidate``)."""

    kind: ClassVar[str] = "checkpoint_consolidate"
    source: str
    """``run:<id>/step-NNNNNN``: the sharded checkpoint."""
    source_manifest_digest: str
    step: int
    checkpoint: str
    """The consolidated checkpoint directory, relative to the output directory."""
    manifest_digest: str
    weights_digest: str


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TrainerStepReceipt(ReceiptBody):
    """One accepted optimizer step."""

    kind: ClassVar[str] = "trainer_step"
    stage_id: str
    step_in: int
    step_out: int
    batch_digest: str
    """sha256 of the sample ids and cursor the step consumed."""
    cursor: tuple[int, int] | None
    loss: float
    """The training loss over the whole global batch (the mean of the ranks' losses over their equal slices)."""
    lr: float
    optimizer: str
    checkpoint: str | None = None
    """The checkpoint the step started from, when it is the first step after a resume."""


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointReceipt(ReceiptBody):
    """One checkpoint written or made durable (or skipped as untrustworthy)."""

    kind: ClassVar[str] = "checkpoint"
    stage_id: str
    step: int
    checkpoint: str
    """Run-relative path of the checkpoint."""
    manifest_digest: str | None
    object_digest: str | None
    writer: str
    durability: str
    """``async_write_in_flight``, ``durable`` or ``rejected``."""
    reason: str | None = None


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EvalReceipt(ReceiptBody):
    """One evaluation result."""

    kind: ClassVar[str] = "eval"
    stage_id: str
    step: int
    split: str
    data_manifest_digest: str | None
    policy_revision: str | None
    """The model's identity at evaluation: the step, or a checkpoint digest when one exists."""
    scores: dict[str, float]


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GrowthReceipt(ReceiptBody):
    """One structural change to a graph-core operator, with the evidence it was made on."""

    kind: ClassVar[str] = "growth"
    stage_id: str
    step: int
    action: str
    """``commit`` (Warm -> Hot: a probed region joins the structure) or ``prune`` (Hot -> Cold)."""
    object: str
    """``core:N`` (node N's own state function) or ``edge:S->T`` (the connector from node S to node T)."""
    region: str
    """What changed, e.g. ``T.d0<-S@lag1`` (target node T's dim 0 reading node S one step back)."""
    entries: int
    complexity_before: int
    complexity_after: int
    gamma_after: float
    evidence: dict[str, float]
    """Commit: ``snr``, ``loss_change_mean`` and ``loss_change_std`` (of L_total, negative is better, over
    fresh batches), ``score``. Prune: ``taylor_score`` (0.5 * v * w^2, summed) and ``abs_value_max``."""


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MembershipReceipt(ReceiptBody):
    """One worker-group start of a mesh: who trains from here on, and what changed (docs/elastic.md)."""

    kind: ClassVar[str] = "membership"
    stage_id: str
    epoch: int
    """The membership epoch: the previous one (from the resumed checkpoint) plus one; 1 at the start."""
    change: str
    """``start``, ``grow``, ``shrink``, ``drain`` (only drained nodes left), ``replace`` or ``restart``."""
    previous_members: dict[str, str]
    """node id -> state in the previous epoch (empty at the start)."""
    members: dict[str, str]
    """node id -> state in this epoch (the nodes gone are ``offline``)."""
    previous_world_size: int | None
    world_size: int
    settings: dict[str, Any]
    """The launcher's rendezvous and lease settings, as recorded in the environment (torchrun's)."""
    checkpoint_manifest_digest: str | None
    """The manifest digest of the checkpoint this epoch resumed from (None at the start)."""
    cursor: dict[str, int] | None
    """The global data cursor this epoch starts from."""
    steps_replayed: int
    """Steps the previous epoch trained past its last durable checkpoint, trained again now."""


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ChainSealReceipt(ReceiptBody):
    """The terminal receipt of a completed run: nothing may follow it but a resume of the same run."""

    kind: ClassVar[str] = "chain_seal"
    stage_id: str
    step: int
    receipts: int
    """How many receipts the chain holds before this one."""


@register_receipt
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ChainRepairReceipt(ReceiptBody):
    """A torn final line (a kill or a full disk during an append) cut off on resume, and what it held."""

    kind: ClassVar[str] = "chain_repair"
    dropped_bytes: int
    dropped_sha256: str
    anchor: str
    """The durable checkpoint's recorded head the kept chain reaches (what proves the cut line came after it)."""
