"""Framework-free truth: digests, atomic files, run records. Imports no Lightning."""

from lit_psion.core.digest import canonical_json, sha256_bytes, sha256_file, sha256_json
from lit_psion.core.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from lit_psion.core.layout import RunLayout
from lit_psion.core.run import RunContext, RunRecord, RunStatus, new_run_id, run_context

__all__ = [
    "RunContext",
    "RunLayout",
    "RunRecord",
    "RunStatus",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "canonical_json",
    "new_run_id",
    "read_json",
    "run_context",
    "sha256_bytes",
    "sha256_file",
    "sha256_json",
]
