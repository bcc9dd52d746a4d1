"""Branching online-learning sessions (seed 000): a base world model, sessions that learn online, forks.

The names below are imported on first use, so that ``session list`` and ``session show`` answer
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"SignatureMismatch": "store", "Store": "store", "model_signature": "store", "Environment": "world",
          "WorldModel": "world", "WorldConfig": "settings"}  # fmt: skip

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
