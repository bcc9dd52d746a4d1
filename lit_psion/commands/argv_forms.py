"""argv in the forms LightningCLI's parser takes: what a shell or a user wrote that it would misread.

Plain functions over argv (no Lightning import): the shell's expansion of ``--data.files notes/*.md`` gathered
into one list, and a nested setting set to null given as a mapping of its parent.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lit_psion.core.errors import ConfigError

FILES_FLAGS = ("--data.files", "--data.init_args.files")


def gather_files(argv: list[str]) -> list[str]:
    """``argv`` with ``--data.files a.md b.md ...`` (what a shell makes of ``--data.files notes/*.md``) as one
    list value; a single value, a quoted glob or ``--data.files=...`` is left as it is."""
    gathered, i = [], 0
    while i < len(argv):
        gathered.append(argv[i])
        if argv[i] in FILES_FLAGS:
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                values.append(argv[i + 1])
                i += 1
            if not values:
                raise ConfigError(f"{argv[i]} was given no value; give a file, several, or a quoted glob "
                                  f"({argv[i]} 'notes/*.md')")  # fmt: skip
            gathered.append(values[0] if len(values) == 1 else json.dumps(values))
        i += 1
    return gathered


YAML_NULLS = ("null", "Null", "NULL", "~")
_ROOTS = re.compile(r"(model|data|trainer\.\w+)(\.init_args)?")
"""The settings that name a class (a class path and its ``init_args``), whose own settings are one level down."""


def nulls_as_mappings(argv: list[str]) -> list[str]:
    """``argv`` with ``--model.optimizer.decay_steps null`` (a setting of a dataclass inside a class's settings)
    given as ``--model.optimizer={"decay_steps": null}``. jsonargparse reads the null of such a nested flag as the
    text 'None', which no ``float | None`` setting takes, while the same null in YAML, or in a mapping of the
    parent (merged into the parent's other settings), is read as null."""
    out, i = [], 0
    while i < len(argv):
        arg, value, taken = argv[i], None, 1
        if arg.startswith("--") and "=" in arg:
            arg, value = arg.split("=", 1)
        elif arg.startswith("--") and i + 1 < len(argv):
            value, taken = argv[i + 1], 2
        parent, _, key = arg[2:].rpartition(".")
        if value in YAML_NULLS and "." in parent and not _ROOTS.fullmatch(parent) and key.isidentifier():
            out.append(f"--{parent}={json.dumps({key: None})}")
            i += taken
        else:
            out.append(argv[i])
            i += 1
    return out


def as_list(value: Any) -> list[Any]:
    """A config value that may be one item, a list of them or None (a trainer's loggers, callbacks), as a list."""
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]
