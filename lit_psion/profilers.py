"""The profiler a fit runs with when none is configured.

Lightning wraps every hook call in ``trainer.profiler.profile(name)``: about 60 a training step with lit_psion's
callbacks. Its default, ``PassThroughProfiler``, records nothing but still enters a generator-based context
manager each time, about a microsecond apiece, and more when the model's step has just flushed the CPU's
caches. :class:`QuietProfiler` answers each with one shared no-op context (half the cost of a hook call at
small step sizes, benchmarks/throughput.py). ``--trainer.profiler simple`` (or any profiler) replaces it.
"""

from __future__ import annotations

import contextlib

from lightning.pytorch.profilers import PassThroughProfiler
from typing_extensions import override

_NOTHING = contextlib.nullcontext()


class QuietProfiler(PassThroughProfiler):
    """Lightning's pass-through profiler without the per-call context manager: it profiles nothing."""

    @override
    def profile(self, action_name: str) -> contextlib.nullcontext:
        return _NOTHING
