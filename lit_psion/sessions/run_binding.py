"""What ties a session run to its session: ``runs/<run_id>/session_run.json``, which its receipt chain names.

A run's receipts chain from the run's own genesis, and ``meta.json`` (unsigned) says which runs a session holds.
Neither says which session a run was trained in: a run directory copied from another session, its record pasted
into this one's ``meta.json``, would verify. So each run writes, before it trains, the session it runs in, the
base that session was made for and the run before it in that session, and its ``started`` receipt records the
sha256 of those bytes as its ``config_digest``. Moving the run, or editing the file to agree, means re-writing the
chain from its genesis: what the threat model leaves out (someone who rewrites every file consistently).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lit_psion.core.chain import parse_receipt
from lit_psion.core.digest import sha256_file

BINDING_FILE = "session_run.json"
UNBOUND = "unbound"
"""What :func:`binding_problem` says of a run made before runs named their session: there is nothing to check."""


def binding_text(session_id: str, meta: dict[str, Any], run_id: str, steps: int, seed: int) -> str:
    """The bytes a new run of ``meta``'s session writes as its ``session_run.json``."""
    runs = meta.get("runs") or []
    previous = str(runs[-1].get("run_id")) if runs else None
    record = {"session_id": session_id, "run_id": run_id, "base_ckpt_hash": meta.get("base_ckpt_hash"),
              "previous_run_id": previous, "steps": steps, "seed": seed}  # fmt: skip
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def binding_problem(log: Path, expected: dict[str, Any]) -> str | None:
    """Why the run whose verified receipt chain is ``log`` is not the run ``expected`` describes (its session, base,
    place in the session), or None; a run made before runs named their session (its
    ``started`` receipt records no config digest and it has no ``session_run.json``) gets :data:`UNBOUND`."""
    recorded = _started_digest(log)
    path = log.parent / BINDING_FILE
    present = path.is_file() and not path.is_symlink()
    if recorded is None:
        return (f"{BINDING_FILE} is not the one the run started with (its started receipt records none): it was "
                "added since; restore the run from a backup") if present else UNBOUND  # fmt: skip
    if not present:
        return (f"{BINDING_FILE} is missing, and the run's started receipt records its digest {recorded[:16]}...: "
                "restore it from a backup")  # fmt: skip
    if (actual := sha256_file(path)) != recorded:
        return (f"{BINDING_FILE} has sha256 {actual[:16]}..., but the run's started receipt records {recorded[:16]}"
                "...: it was edited; restore it from a backup")  # fmt: skip
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        written = None
    if not isinstance(written, dict):
        return f"{BINDING_FILE} is not a JSON object; restore the run from a backup"
    for key, wanted in expected.items():
        if written.get(key) != wanted:
            return (f"the run was trained with {key} {written.get(key)!r} ({BINDING_FILE}, which its receipts "
                    f"bind), but here it is recorded with {wanted!r}: a run copied or moved from elsewhere; restore "
                    "meta.json from a backup")  # fmt: skip
    return None


def _started_digest(log: Path) -> str | None:
    """The ``config_digest`` of the chain's first ``training_run`` receipt (its ``started``)."""
    with log.open("rb") as lines:
        for line in lines:
            try:
                receipt = parse_receipt(line.decode("utf-8"))
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
                return None
            if receipt.kind == "training_run":
                digest = receipt.body.get("config_digest")
                return digest if isinstance(digest, str) else None
    return None
