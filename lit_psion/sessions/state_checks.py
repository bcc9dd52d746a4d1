"""What a session's states must hold to be run: each tensor's name and shape, the optimizer state's structure.

A state whose digest ``meta.json`` records (rewritten with it) is checked here too, so that ``session verify``
refuses what ``session run`` would, rather than the run failing mid-fit.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lit_psion.nn.optim import a_rate
from lit_psion.sessions.settings import WorldConfig
from lit_psion.sessions.world import WorldModel

SERVED, GATE_WINDOW = "served.", "gate.window"
"""In ``plastic_state.safetensors``: the prefix of the served weights' tensors (the learner's have none), and the
promotion gate's window so far, (chunks, 2) float64: each chunk's served and learner mean squared error."""
MAX_NS_STEPS = 99
"""The most Newton-Schulz iterations ``torch.optim.Muon`` takes (it refuses 100 or more at its first step)."""


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


_GROUP = {  # what each of Muon's param-group settings must be, and in words
    "lr": (a_rate, "a learning rate"),
    "momentum": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "ns_steps": (lambda v: type(v) is int and 1 <= v <= MAX_NS_STEPS, f"a whole number in [1, {MAX_NS_STEPS}]"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "eps": (lambda v: _number(v) and v > 0, "a number > 0"),
    "nesterov": (lambda v: type(v) is bool, "true or false"),
    "ns_coefficients": (lambda v: type(v) in (tuple, list) and len(v) == 3 and all(map(_number, v)), "3 numbers"),
    "adjust_lr_fn": (lambda v: v in (None, "original", "match_rms_adamw"), "None, original or match_rms_adamw"),
}


def plastic_problem(tensors: dict[str, torch.Tensor], config: WorldConfig) -> str | None:
    """What keeps ``tensors`` from being a session's plastic state for the model ``config`` describes, or None:
    a learner's tensor missing, or a tensor of a name, a shape or a kind the model has not."""
    learner = {name: tuple(t.shape) for name, t in WorldModel(config).plastic_state().items()}
    if missing := sorted(learner.keys() - tensors.keys()):
        return f"lacks {', '.join(missing)}"
    for name, tensor in sorted(tensors.items()):
        want = learner.get(name.removeprefix(SERVED) if name.startswith(SERVED) else name)
        if name == GATE_WINDOW:
            if tensor.dim() != 2 or tensor.shape[1] != 2:
                return f"holds {name} of shape {tuple(tensor.shape)}, not (chunks, 2)"
        elif want is None:
            return (f"holds {name}, which the base model has not (its plastic tensors: {', '.join(learner)}, each "
                    f"also as {SERVED}<name>, and {GATE_WINDOW})")  # fmt: skip
        elif tuple(tensor.shape) != want:
            return f"holds {name} of shape {tuple(tensor.shape)}, but the base model's is {want}"
        if not tensor.is_floating_point():
            return f"holds {name} of dtype {str(tensor.dtype).removeprefix('torch.')}, not floating point"
    return None


def optimizer_problem(state: Any, config: WorldConfig) -> str | None:
    """What keeps ``state`` from loading into the session's Muon on the model ``config`` describes, or None.

    ``{}`` is a fresh optimizer. Otherwise it must be Muon's ``state_dict()``: as many param groups as Muon's, each
    with as many parameters and every setting Muon reads (each in its range), and a state per parameter whose tensors
    have the parameter's shape.
    """
    if isinstance(state, dict) and not state:
        return None
    params = WorldModel(config).plastic_parameters()
    fresh = torch.optim.Muon(params).state_dict()["param_groups"]
    if not isinstance(state, dict) or set(state) != {"state", "param_groups"}:
        return f"is not an optimizer state (a {type(state).__name__}{_keys(state)}, not state and param_groups)"
    groups = state["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(fresh):
        return f"has param_groups {_kind(groups)}, not a list of the session's optimizer's {len(fresh)}"
    shapes: dict[Any, tuple[int, ...]] = {}
    for index, (group, want) in enumerate(zip(groups, fresh, strict=True)):
        if not isinstance(group, dict):
            return f"has param_groups[{index}] {_kind(group)}, not a param group"
        if missing := sorted(want.keys() - group.keys()):
            return f"has param_groups[{index}] without {', '.join(map(repr, missing))}"
        ids = group["params"]
        if not isinstance(ids, list) or len(ids) != len(want["params"]) or len(set(map(repr, ids))) != len(ids) \
                or not all(type(i) is int for i in ids):  # fmt: skip
            return (f"has param_groups[{index}].params {ids!r}, not {len(want['params'])} distinct parameter "
                    "numbers (the session's optimizer trains that many)")  # fmt: skip
        for key, (ok, words) in _GROUP.items():
            if key in group and not ok(group[key]):
                return f"has param_groups[{index}].{key} {group[key]!r}, not {words}"
        start = sum(len(g["params"]) for g in fresh[:index])
        shapes.update({i: tuple(params[start + n].shape) for n, i in enumerate(ids)})
    if not isinstance(state["state"], dict):
        return f"has state {_kind(state['state'])}, not a state per parameter"
    for key, entry in state["state"].items():
        if key not in shapes:
            return f"has a state for parameter {key!r}, which no param group names"
        if not isinstance(entry, dict) or not all(isinstance(t, torch.Tensor) for t in entry.values()):
            return f"has state[{key!r}] {_kind(entry)}, not named tensors"
        for name, tensor in entry.items():
            if tuple(tensor.shape) != shapes[key] or not tensor.is_floating_point():
                return (f"has state[{key!r}].{name} of shape {tuple(tensor.shape)} ({tensor.dtype}), but its "
                        f"parameter's is {shapes[key]} (floating point)")  # fmt: skip
    return None


def _kind(value: Any) -> str:
    return f"of {len(value)} entries" if isinstance(value, list | dict) else f"a {type(value).__name__}"


def _keys(value: Any) -> str:
    return f" of {sorted(map(str, value))}" if isinstance(value, dict) else ""
