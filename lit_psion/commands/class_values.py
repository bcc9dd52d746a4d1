"""What a training command says when a setting that takes a class (``--model``, ``--data``, ``--trainer.callbacks``)
is given something that is not a class path: a file, or a name no imported module defines."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterator
from typing import Any

EXAMPLES = {
    "model": "lit_psion.models.DecoderLM",
    "data": "lit_psion.datamodules.CorpusDataModule",
    "trainer.callbacks": "lightning.pytorch.callbacks.EarlyStopping",
}
"""A class path each class setting takes, to show the spelling."""

_KNOWN = {
    "model": ("lit_psion.models",),
    "data": ("lit_psion.datamodules",),
    "trainer.callbacks": ("lit_psion.callbacks", "lightning.pytorch.callbacks"),
}
"""The packages whose classes each class setting most often takes, for a near name."""

_SETTINGS_FILE = re.compile(r".*\.(ya?ml|json)")
_FILE = re.compile(r".*([/\\].*|\.py)")


def not_a_class_path(key: str, given: str, message: str) -> str | None:
    """The line for ``given``, refused for ``key``, when it is a file or a bare name no module defines (else None)."""
    example = EXAMPLES.get(key, "package.module.ClassName")
    spelled = f"give the class as module.ClassName (such as {example})"
    if _SETTINGS_FILE.fullmatch(given):
        return (f"{key}: {given!r}: no such file of its settings (class_path and init_args); give an existing one, "
                f"or {spelled}")  # fmt: skip
    if _FILE.fullmatch(given):
        return (f"{key}: {given!r} is a file, not a class; {spelled}, whose module Python imports from the working "
                "directory or PYTHONPATH")  # fmt: skip
    if key in EXAMPLES and re.fullmatch(r"[A-Za-z_]\w*", given) and f"dot import path string: {given}" in message:
        known = {path.rsplit(".", 1)[-1].lower(): path for path in _known_classes(key)}
        near = difflib.get_close_matches(given.lower(), known, n=1, cutoff=0.6)
        hint = f"did you mean {known[near[0]]}? Else " if near else ""
        return f"{key}: no class named {given!r} is known; {hint}{spelled}"
    return None


def near_setting(class_path: str, why: str) -> tuple[str, str] | None:
    """(the setting given, the flag meant) when ``why`` refuses a setting ``class_path``'s class lacks and it has one
    of a near name (``monitr``: ``monitor``; ``optimizr.lr``: ``optimizer.lr``), else None."""
    given = re.fullmatch(r"Option '([^']+)' is not accepted", why) or re.fullmatch(
        r"unrecognized arguments: --([\w.]+)(?:[= ].*)?", why)  # fmt: skip
    if given is None:
        return None
    try:
        module, _, name = class_path.rpartition(".")
        parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    first, dot, rest = given[1].partition(".")
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    near = difflib.get_close_matches(first, names, n=1, cutoff=0.6)
    return (first, f"{near[0]}{dot}{rest}") if near and near[0] != first else None


def _known_classes(key: str) -> list[str]:
    """Class paths of the classes ``key`` most often takes (those its packages export)."""
    found = []
    for package in _KNOWN.get(key, ()):
        module = importlib.import_module(package)
        found += [f"{package}.{name}" for name in getattr(module, "__all__", ()) if isinstance(getattr(module, name,
                  None), type)]  # fmt: skip
    return found


def unfilled_settings(config: Any) -> list[str]:
    """A class's setting with neither a type hint nor a default that nothing gave: jsonargparse passes it None
    without a word (and config.yaml records null), where a typed one is refused as required."""
    problems: list[str] = []
    for key, given in _classes_given(config, ""):
        try:
            module, _, name = given["class_path"].rpartition(".")
            cls = getattr(importlib.import_module(module), name)
            parameters = inspect.signature(cls).parameters.values()
        except (ImportError, AttributeError, ValueError, TypeError):
            continue  # (the parser has named a class that does not import)
        init_args = given.get("init_args") or {}
        unfilled = [p.name for p in parameters if p.default is p.empty and p.annotation is p.empty
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and _get(init_args, p.name) is None]
        if unfilled:
            listed = " and ".join(unfilled)
            problems.append(f"{key}: {given['class_path']} needs {listed} (its __init__ gives no default and no type), "
                            f"which nothing gave; give {'it' if len(unfilled) == 1 else 'them'} (--{key}.{unfilled[0]} "
                            "VALUE), or a default in its __init__")  # fmt: skip
    return problems


def _classes_given(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    """(where, the class_path-and-init_args mapping) for every class the parsed config gives, outermost first."""
    if isinstance(value, list | tuple):
        for item in value:
            yield from _classes_given(item, key)
        return
    if not hasattr(value, "items"):
        return
    if isinstance(_get(value, "class_path"), str):
        yield key, value
    for name, inner in list(vars(value).items() if not isinstance(value, dict) else value.items()):
        if name != "class_path":
            yield from _classes_given(inner, key if name == "init_args" else f"{key}.{name}".lstrip("."))


def _get(mapping: Any, name: str) -> Any:
    return mapping.get(name) if hasattr(mapping, "get") else getattr(mapping, name, None)
