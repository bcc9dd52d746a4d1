"""The largest model a config may ask for, checked from the config before anything is allocated.

A size far out of range (``d_model: 1000000000``) used to reach the allocator and fail there with exit 1
("DefaultCPUAllocator: can't allocate memory"), or, a little smaller, be allocated and get the process killed
while initialising it. Each config estimates its parameter count and refuses one whose float32 weights alone would
not fit in this machine's memory (every model is built whole in host memory before it is moved or sharded).
"""

from __future__ import annotations

import os

FALLBACK_BYTES = 2**42
"""The memory assumed where the machine does not say (4 TiB)."""


def host_memory_bytes() -> int:
    """This machine's physical memory in bytes (:data:`FALLBACK_BYTES` where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return FALLBACK_BYTES


def size_problem(what: str, parameters: int, settings: dict[str, object]) -> str | None:
    """The problem with a model of ``parameters`` parameters made by ``settings`` (None: it fits in memory)."""
    memory = host_memory_bytes()
    if 4 * parameters <= memory:
        return None
    named = ", ".join(f"{name}={value!r}" for name, value in settings.items())
    return (f"{what} would have about {parameters:.3g} parameters ({named}): {4 * parameters / 2**30:.3g} GiB in "
            f"float32, more than this machine's {memory / 2**30:.3g} GiB of memory; lower these sizes")  # fmt: skip
