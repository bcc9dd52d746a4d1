"""Training scalars logged on the steps Lightning writes a row, with the values of that very step.

Lightning writes a row of step metrics every ``log_every_n_steps`` optimizer steps, and on the step a
fit stops (``trainer.should_stop``, which a callback such as ``Timer`` may set in its
``on_train_batch_end``). A value logged on any other step is overwritten before a logger sees it,
and ``self.log`` costs about half a millisecond, 1-2% of a small model's step. So a training step
keeps its scalars aside (:func:`keep_step_logs`) and the module's ``on_train_batch_end``, which runs
after every callback's and before Lightning decides on the row, writes them as one row only when the
row is written (:func:`log_kept_step_logs`). The progress bar shows the values of the last step that logged.

A fit that stops at ``max_steps`` between two rows ends without Lightning writing its last step's row;
:func:`log_kept_step_logs` writes that row itself, from what the step kept. Callbacks and strategies
that measure on row steps (telemetry, transaction counters) log through :func:`log_step_values`, which
keeps their values for that last row too.

Duck-typed over Lightning's module and trainer (``_trainer``, ``log``, ``loggers``), so any layer may
use it without core importing Lightning.
"""

from __future__ import annotations

from typing import Any

from lit_psion.core.errors import ConfigError

PROGRESS_BAR_KEYS = frozenset({"train/loss", "train/mse"})
_KEPT = "_lit_psion_step_logs"


def writes_log_row(module: Any) -> bool:
    """Whether Lightning writes a row of step metrics for the current training step (checked as late as
    the module's ``on_train_batch_end``, it is the decision Lightning then takes)."""
    trainer = module._trainer
    if trainer is None:
        return True
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


def is_last_step(module: Any) -> bool:
    """Whether the current training step is the one a fit stops on by ``max_steps`` (during the step, before
    its optimizer step is counted, or after it)."""
    trainer = module._trainer
    if trainer is None or trainer.max_steps in (None, -1):
        return False
    return trainer.global_step + 1 >= trainer.max_steps


def keep_step_logs(module: Any, **values: Any) -> None:
    """Keep this step's scalars (tensors are detached) for :func:`log_kept_step_logs`; adds to what the step
    kept already, so hooks before the optimizer step (the learning rate) can add theirs."""
    kept = module.__dict__.setdefault(_KEPT, {})
    kept.update({name: value.detach() if hasattr(value, "detach") else value for name, value in values.items()})


def replace_kept(module: Any, name: str, value: Any) -> None:
    """Replace ``name``'s value this step kept, if it kept one (the loss over the whole global batch for rank
    0's own: the row then shows what the step receipt records, at every world size)."""
    kept = module.__dict__.get(_KEPT)
    if kept is not None and name in kept:
        kept[name] = value


def log_step_values(module: Any, **values: Any) -> None:
    """Scalars a callback or a strategy measured on this step, for its row if Lightning writes one, and on the last
    step of a fit stopped by ``max_steps`` between rows, for the row :func:`log_kept_step_logs` writes. A module
    that flushes kept logs (``flushes_step_logs``: lit_psion's models) keeps them for its one row; any other
    module logs them with ``self.log``."""
    if getattr(module, "flushes_step_logs", False):
        if writes_log_row(module) or is_last_step(module):
            keep_step_logs(module, **values)
    elif writes_log_row(module):
        for name, value in values.items():
            module.log(name, value, on_step=True, on_epoch=False)
    elif is_last_step(module):
        keep_step_logs(module, **values)


def log_kept_step_logs(module: Any) -> None:
    """Write the step's kept scalars as its row if Lightning writes this step's row; forget them either way.

    One call of Lightning's own ``LoggerConnector.log_metrics`` (the row at the step's index, with the epoch, to
    every logger, as ``self.log`` values reach them), not ``self.log`` per value: each costs a quarter to half a
    millisecond (Lightning moves and copies its whole result record every call), and a row holds about ten.
    The progress bar's values (the loss) go where ``self.log(name, value, prog_bar=True, logger=False)`` would
    leave them, without its cost: the trainer's ``progress_bar_metrics`` (every progress bar reads them) and its
    ``callback_metrics`` (an ``EarlyStopping`` or a ``ModelCheckpoint`` monitoring ``train/loss``)."""
    kept = module.__dict__.pop(_KEPT, None)
    if kept and _accumulating(module):
        return  # a micro-batch before its step's last: no row (Lightning writes none for it either), the step's comes
    if kept and writes_log_row(module):
        connector = getattr(module._trainer, "_logger_connector", None)
        if connector is None:  # not Lightning's trainer: every value through self.log
            for name, value in kept.items():
                module.log(name, value, prog_bar=name in PROGRESS_BAR_KEYS)
            return
        shown = {name: kept[name] for name in PROGRESS_BAR_KEYS & kept.keys()}
        if (_users_values_in_the_row(module, kept) or not all(hasattr(value, "detach") for value in shown.values())
                or not getattr(type(module).on_train_batch_end, _WRITES_THE_ROW, False)):  # fmt: skip
            _join_lightnings_row(module, kept)  # a value of the user's is in this row, or may be logged after this
            return  # (a subclass's on_train_batch_end, after super()'s), or there is a plain number to show
        module._trainer.callback_metrics.update(shown)  # tensors, as self.log leaves them there
        module._trainer.progress_bar_metrics.update({name: float(value) for name, value in shown.items()})
        connector.log_metrics({name: float(value) for name, value in kept.items()})
    elif kept and _stops_at_max_steps(module):
        _write_last_row(module, kept)


_WRITES_THE_ROW = "_lit_psion_writes_the_step_row"


def writes_the_step_row(hook: Any) -> Any:
    """Mark a model's own ``on_train_batch_end`` that ends by :func:`log_kept_step_logs`. A subclass's override
    (which may ``self.log`` after calling ``super()``'s, once this row is decided) carries no mark, so its rows
    join Lightning's write through ``self.log``: one row a step, whatever it logs after."""
    setattr(hook, _WRITES_THE_ROW, True)
    return hook


def _users_values_in_the_row(module: Any, kept: dict[str, Any]) -> bool:
    """Whether Lightning writes values of others' ``self.log`` (a callback's, the model's) into this row. Raises a
    ConfigError if one has a name the row's kept values have (one of the two would be silently lost). Only what
    reaches the row counts: a value logged for the loggers, per step (an ``on_epoch`` one goes to the epoch's row),
    and not reset since (Lightning keeps a step value until the epoch ends; lit_psion's own, logged to join a row,
    are reset as the next step starts: :func:`forget_joined_step_logs`). One logged both ways is refused too,
    though its row name is ``NAME_step``: joining its row, ours would be a second ``self.log`` of that name in
    that hook, which Lightning refuses."""
    joins = False
    for result in (getattr(module._trainer, "_results", None) or {}).values():
        meta = getattr(result, "meta", None)
        if meta is None or getattr(result, "has_reset", False) or not (meta.logger and meta.on_step):
            continue
        if (name := meta.name) in kept:
            raise ConfigError(f"self.log({name!r}, ...) in {meta.fx} logs a name lit_psion writes itself in each "
                              f"step's row; log that value under another name (for example 'user/{name}')")
        if isinstance(name, str) and name.startswith(("val/", "test/")):  # (their receipts record evaluations)
            raise ConfigError(f"self.log({name!r}, ...) in {meta.fx} logs an evaluation score's name while training; "
                              f"log that value under another name (for example 'user/{name.split('/', 1)[1]}')")
        joins = True
    return joins


_OURS = "_lit_psion_self_logged"
"""Lightning's keys (``HOOK.NAME``) of what a module's rows logged with ``self.log``, to join a row that holds
values of the user's."""


def _join_lightnings_row(module: Any, kept: dict[str, Any]) -> None:
    """Log the step's kept values with ``self.log``, so Lightning writes them in the row it writes anyway: one row."""
    ours = module.__dict__.setdefault(_OURS, set())
    for name, value in kept.items():
        module.log(name, value, on_step=True, on_epoch=False, prog_bar=name in PROGRESS_BAR_KEYS, batch_size=1)
        ours.add(f"{module._current_fx_name}.{name}")  # (Lightning's key for it)


def forget_joined_step_logs(module: Any) -> None:
    """As a step starts: reset what a row logged with ``self.log`` to join Lightning's write. Lightning keeps a step
    value until the epoch ends, so a later row (one that keeps fewer names, or the last one, written from what
    Lightning holds) would repeat it; and a value under one of those keys is then another writer's."""
    ours = module.__dict__.get(_OURS)
    results = getattr(getattr(module, "_trainer", None), "_results", None) if ours else None
    for key in ours & results.keys() if results else ():
        results[key].reset()


def _accumulating(module: Any) -> bool:
    """Whether this training batch is a micro-batch before the last of its optimizer step's."""
    loop = getattr(module._trainer, "fit_loop", None)
    return bool(loop is not None and loop._should_accumulate())


def drop_unwritten_step_logs(module: Any) -> bool:
    """Forget what an earlier step kept and its module never wrote (a subclass's ``on_train_batch_end`` that does
    not call lit_psion's); True if there was any. Called as a step starts, when nothing kept should be left."""
    return bool(module.__dict__.pop(_KEPT, None))


def _stops_at_max_steps(module: Any) -> bool:
    trainer = module._trainer
    return trainer is not None and trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps


def _write_last_row(module: Any, kept: dict[str, Any]) -> None:
    """The row of the step a fit stops on by ``max_steps``, which Lightning does not write (it writes one when a
    fit stops through ``should_stop``), straight to the loggers, as Lightning would have: at the step's index,
    with the epoch."""
    trainer = module.trainer
    connector = getattr(trainer, "_logger_connector", None)  # what the step logged with self.log, which Lightning
    logged = connector.metrics.get("log", {}) if connector is not None else {}  # would have written on a row step
    metrics = {name: float(value) for name, value in {**logged, **kept}.items()} | {"epoch": trainer.current_epoch}
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step - 1)
