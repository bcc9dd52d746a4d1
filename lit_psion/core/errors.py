"""Typed errors, the failure class each one records in run.json, and its CLI exit code (docs/cli.md)."""

from __future__ import annotations


class LitPsionError(Exception):
    """Base of the errors lit_psion reports to a user as one line."""

    exit_code = 1
    failure_class = "internal"


class ConfigError(LitPsionError, ValueError):
    """A bad setting: the message quotes the value and says what would be valid."""

    exit_code = 2
    failure_class = "config_invalid"


class DataError(LitPsionError, ValueError):
    """Bad or missing data: a missing file, an empty corpus, too little text, a changed manifest."""

    exit_code = 3
    failure_class = "data_invalid"


class DataConfigError(ConfigError):
    """A bad data setting (``batch_size`` below 1, an unknown split rule, a vocabulary too small): exit 2."""


class DataManifestMismatch(DataError):
    """A resume against data that is not the data the checkpoint was trained on: exit 3."""


class CheckpointError(LitPsionError, RuntimeError):
    """A checkpoint that cannot be found or trusted."""

    exit_code = 4
    failure_class = "checkpoint_untrusted"


class EvidenceError(LitPsionError):
    """Evidence that does not verify: a receipt chain edited, reordered, or cut short."""

    exit_code = 5
    failure_class = "evidence_invalid"


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be made durable (disk full, I/O error): the previous one stays pointed at."""

    exit_code = 6
    failure_class = "checkpoint_flush_failed"


class TransactionError(LitPsionError):
    """Too many consecutive optimizer steps rolled back: training is diverging, so it stops."""

    exit_code = 7
    failure_class = "diverged"


class LockedError(LitPsionError):
    """Another process holds the lock on a directory it is writing (a run, a session): exit 8, nothing written."""

    exit_code = 8
    failure_class = "locked"


def lit_psion_cause(error: BaseException) -> LitPsionError | None:
    """The lit_psion error behind ``error``, following the exception chain (Lightning wraps some)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, LitPsionError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def failure_class(error: BaseException) -> str:
    """The failure class run.json records for a fit that ended with ``error``."""
    cause = lit_psion_cause(error)
    return cause.failure_class if cause is not None else "internal"
