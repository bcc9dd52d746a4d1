"""The subcommands beside LightningCLI's fit/validate/test/predict, dispatched from one table.

Each command is a thin module over the library with a ``main(args)`` taking the arguments after
its name; it is imported only when used, so ``compare`` does not pay for what ``session`` needs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import NoReturn

from lit_psion.core.errors import ConfigError


class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose every complaint (a missing argument too) is one line and exit 2."""

    def __init__(self, prog: str | None = None, **kwargs: object) -> None:
        kwargs.setdefault("exit_on_error", False)
        super().__init__(prog=prog, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")

COMMANDS_MODULES = {
    "receipts": "lit_psion.commands.receipts",
    "ckpt": "lit_psion.commands.ckpt",
    "doctor": "lit_psion.commands.doctor",
    "mesh": "lit_psion.commands.mesh",
    "compare": "lit_psion.commands.compare",
    "adapter": "lit_psion.commands.adapter",
    "events": "lit_psion.commands.events",
    "session": "lit_psion.commands.session",
    "window": "lit_psion.commands.window",
}
"""``python -m lit_psion NAME ...`` -> the module whose ``main`` runs it."""


def _lazy(module: str) -> Callable[[list[str]], None]:
    def run(argv: list[str]) -> None:
        importlib.import_module(module).main(argv[1:])

    return run


COMMANDS: dict[str, Callable[[list[str]], None]] = {name: _lazy(module) for name, module in COMMANDS_MODULES.items()}
