"""Framework-free truth: digests, atomic files, run records. Imports no Lightning."""

from lit_psion.core.digest import canonical_json, sha256_bytes, sha256_file, sha256_json
from lit_psion.core.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from lit_psion.core.run import RunRecord, RunStatus, new_run_id

__all__ = [
    "RunRecord",
    "RunStatus",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "canonical_json",
    "new_run_id",
    "read_json",
    "sha256_bytes",
    "sha256_file",
    "sha256_json",
]
