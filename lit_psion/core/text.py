"""Model text shown on a terminal or written to a log."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab written as an escape (``\\x1b``): sampled text may
    hold any token the vocabulary has, and an escape sequence printed raw moves the cursor, recolours or retitles
    the terminal, and a NUL makes a log binary to ``grep``."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match[0]):02x}", text)


def shell_words(*words: str | Path) -> str:
    """``words`` as a shell reads them back, each quoted where it must be: a command line printed for a user to
    paste (``window close 'my windows' w-0001``), where a path with a space or a quote would otherwise split."""
    return " ".join(shlex.quote(str(word)) for word in words)
