"""The largest model a config may ask for, checked from the config before anything is allocated.

A size far out of range (``d_model: 1000000000``) used to reach the allocator and fail there with exit 1
("DefaultCPUAllocator: can't allocate memory"), or, a little smaller, be allocated and get the process killed
while initialising it. Each config estimates its parameter count and refuses one over :data:`MAX_PARAMETERS`.
"""

from __future__ import annotations

MAX_PARAMETERS = 2**32
"""About 4.3e9 parameters: 17 GB in float32, about 70 GB with gradients and Adam's two moments."""


def size_problem(what: str, parameters: int, settings: dict[str, object]) -> str | None:
    """The problem with a model of ``parameters`` parameters made by ``settings`` (None: within the limit)."""
    if parameters <= MAX_PARAMETERS:
        return None
    named = ", ".join(f"{name}={value!r}" for name, value in settings.items())
    return (f"{what} would have about {parameters:.3g} parameters ({named}), over the {MAX_PARAMETERS:.3g} "
            "lit_psion builds: lower these sizes")  # fmt: skip
