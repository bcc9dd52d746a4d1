"""What Lightning says, in lit_psion's words: its refusals of a Trainer setting as one line with the fix, and
its chatter (a cloud-logging advertisement, a deprecation inside its own code) kept off a user's terminal."""

from __future__ import annotations

import logging
import os
import traceback
import warnings

LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
"""The loggers Lightning's ``rank_zero_info`` writes through (the last imported is the one in use)."""


def _not_an_advert(record: logging.LogRecord) -> bool:
    """Neither the litlogger tip nor Lightning's own line for Ctrl-C (a blank line and "Detected KeyboardInterrupt,
    attempting graceful shutdown ..."): lit_psion's line says what the interrupted fit kept."""
    message = str(record.msg)
    return not (message.startswith("\U0001f4a1 Tip:") or "Detected KeyboardInterrupt" in message)


def quiet_lightning(own_trainer: bool = False) -> None:
    """Silence what Lightning prints that no lit_psion user can act on: "Seed set to", the litlogger tip on
    every fit, its Ctrl-C and SIGTERM notices (lit_psion says what stopped and what was kept), and torch's
    FutureWarning about ``LeafSpec`` raised from Lightning's own ``_pytree`` module.

    ``own_trainer``: a command that runs a Trainer of its own (a session's updates, a window's contributors)
    also keeps its device banner and its "`Trainer.fit` stopped: `max_steps=19` reached", which speak of steps
    the user never asked for."""
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").setLevel(logging.WARNING)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _not_an_advert not in logger.filters:
            logger.addFilter(_not_an_advert)
        if own_trainer:
            logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)


def raised_in_lightning(error: BaseException) -> bool:
    """Whether ``error`` came from Lightning's connectors (its account of an accelerator, devices or strategy it
    cannot use), not from a bad call into the Trainer."""
    frames = traceback.extract_tb(error.__traceback__)
    return any(f"{os.sep}lightning{os.sep}" in frame.filename and f"{os.sep}connectors{os.sep}" in frame.filename
               for frame in frames)  # fmt: skip


NO_ACCELERATOR = ("no supported gpu backend", "the accelerator is not available")
"""Lightning's words for an accelerator this machine lacks (``gpu``/``cuda``/``mps`` without one)."""


def trainer_refusal(error: BaseException) -> str:
    """The one line for a Trainer setting Lightning's connectors refused: its first line, and the fix when the
    machine lacks the accelerator asked for (Lightning names none for ``gpu``)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if any(words in line.lower() for words in NO_ACCELERATOR):
        line += "; this machine has no such accelerator: use --trainer.accelerator cpu (or auto)"
    return f"trainer: {line}"
