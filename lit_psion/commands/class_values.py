"""What a training command says when a setting that takes a class (``--model``, ``--data``, ``--trainer.callbacks``)
is given something that is not a class path: a file, or a name no imported module defines."""

from __future__ import annotations

import difflib
import importlib
import re

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


def _known_classes(key: str) -> list[str]:
    """Class paths of the classes ``key`` most often takes (those its packages export)."""
    found = []
    for package in _KNOWN.get(key, ()):
        module = importlib.import_module(package)
        found += [f"{package}.{name}" for name in getattr(module, "__all__", ()) if isinstance(getattr(module, name,
                  None), type)]  # fmt: skip
    return found
