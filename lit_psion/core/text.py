"""Model text shown on a terminal or written to a log."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab written as an escape (``\\x1b``): sampled text may
    hold any token the vocabulary has, and an escape sequence printed raw moves the cursor, recolours or retitles
    the terminal, and a NUL makes a log binary to ``grep``."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match[0]):02x}", text)
