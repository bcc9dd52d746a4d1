"""What the session tests share: the command, a subprocess of it, the small base's settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from lit_psion.cli import main
from lit_psion.core import read_json, sha256_bytes
from tests.helpers import REPO_ROOT

SMALL_BASE = ["--pretrain_steps", "150", "--pretrain_batch", "16", "--pretrain_seq", "16"]


def session(*args: str) -> int:
    return main(["session", *args])


def session_process(*args: str, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lit_psion", "session", *args], stdout=stdout, stderr=stderr,
                            text=True, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


def meta_edit(edit: Any) -> Any:
    """What applies ``edit`` to session s1's meta.json under an artifacts root."""

    def apply(root: Path) -> None:
        path = root / "sessions" / "s1" / "meta.json"
        meta = read_json(path)
        edit(meta)
        path.write_text(json.dumps(meta))

    return apply


def rerecorded_state(make: Any) -> Any:
    """The session's plastic state replaced by ``make(state)`` with its digest re-recorded in meta.json: only what
    the state holds can betray it."""

    def apply(root: Path) -> None:
        from safetensors.torch import load, save

        directory = root / "sessions" / "s1"
        data = save(make(load((directory / "plastic_state.safetensors").read_bytes())))
        (directory / "plastic_state.safetensors").write_bytes(data)
        meta_edit(lambda meta: meta["artifacts"].update({"plastic_state.safetensors": sha256_bytes(data)}))(root)

    return apply


def rerecorded_optimizer(make: Any) -> Any:
    """The session's optimizer state replaced by ``make(state)`` with its digest re-recorded in meta.json."""

    def apply(root: Path) -> None:
        import io

        import torch

        path = root / "sessions" / "s1" / "optim_state.pt"
        buffer = io.BytesIO()
        torch.save(make(torch.load(path, weights_only=True)), buffer)
        path.write_bytes(buffer.getvalue())
        meta_edit(lambda meta: meta["artifacts"].update({"optim_state.pt": sha256_bytes(buffer.getvalue())}))(root)

    return apply
