"""Whether a checkpoint's trainer state is one a resume can load, checked before it is written.

A resume loads the trainer state with ``torch.load(weights_only=True)``, which builds tensors and plain data
only (numbers, strings, lists, dicts, and what ``torch.serialization.add_safe_globals`` allows). A callback
whose ``state_dict`` holds anything else (a ``datetime``, a dataclass, a local function) once made every
checkpoint from then on unloadable while ``ckpt verify`` and ``doctor`` said ok, and a state that cannot be
pickled at all failed the write with an unexpected error and a staged directory left behind. The state is now
tried first, without its tensors (so it costs about a millisecond whatever the model's size), and a part that
would not come back is refused in one line naming it, before anything is written.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from lit_psion.core.errors import ConfigError, load_refusal

_FIX = ("a resume loads checkpoints with torch.load(weights_only=True), which reads tensors and plain data only: "
        "keep numbers, strings, lists, dicts and tensors in a callback's state_dict (or a module's "
        "on_save_checkpoint), or register the class with torch.serialization.add_safe_globals")  # fmt: skip


def refuse_unloadable_state(checkpoint: dict[str, Any]) -> None:
    """Refuse ``checkpoint`` (its weights apart) when a resume could not load what it holds.

    Raises:
        ConfigError: a part of it cannot be pickled, or would be refused by ``weights_only`` loading; the line
            names the part (a callback by its ``state_key``) and what it holds.
    """
    state = {key: value for key, value in checkpoint.items() if key != "state_dict"}
    if _load_problem(_without_tensors(state)) is None:
        return
    part, problem = _culprit(state)
    raise ConfigError(f"the checkpoint of step {checkpoint.get('global_step')} cannot hold {part}: {problem}; "
                      f"{_FIX}")


def _culprit(state: dict[str, Any]) -> tuple[str, str | None]:
    """The part of ``state`` that would not come back (a callback's state first), and why."""
    parts = [(f"callback {key!r}'s state", value) for key, value in (state.get("callbacks") or {}).items()]
    parts += [(f"its {key!r}", value) for key, value in state.items() if key != "callbacks"]
    found = ((part, _load_problem(_without_tensors(value))) for part, value in parts)
    return next(((part, problem) for part, problem in found if problem is not None),
                ("its trainer state", _load_problem(_without_tensors(state))))  # fmt: skip


def _without_tensors(value: Any) -> Any:
    """``value`` with every tensor in its plain dicts, lists and tuples left out: what is checked is the rest."""
    if isinstance(value, torch.Tensor):
        return None
    if type(value) is dict:
        return {key: _without_tensors(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_without_tensors(item) for item in value)
    return value  # anything else as it is: weights_only loading decides whether it comes back


def _load_problem(value: Any) -> str | None:
    """Why ``value`` would not come back from ``torch.save`` and ``torch.load(weights_only=True)``, or None."""
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
    except Exception as error:  # pickling refused it (a local function, a lock, a generator)
        return f"it cannot be saved ({type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]})"
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception as error:  # weights_only refused a pickled object
        return load_refusal(error)
    return None
