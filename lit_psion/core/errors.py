"""Typed errors and the CLI exit code each one maps to (documented in docs/cli.md)."""

from __future__ import annotations


class LitPsionError(Exception):
    """Base of the errors lit_psion reports to a user as one line."""

    exit_code = 1


class ConfigError(LitPsionError, ValueError):
    """A bad setting: the message quotes the value and says what would be valid."""

    exit_code = 2


class DataError(LitPsionError, ValueError):
    """Bad or missing data: a missing file, an empty corpus, too little text, a changed manifest."""

    exit_code = 3


class CheckpointError(LitPsionError, RuntimeError):
    """A checkpoint that cannot be found or trusted."""

    exit_code = 4


class EvidenceError(LitPsionError):
    """Evidence that does not verify: a receipt chain edited, reordered, or cut short."""

    exit_code = 5
