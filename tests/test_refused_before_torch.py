"""A command's refusal of an argument it can judge without a model answers before torch is imported (issue 17 item
4: a non-training subcommand answers in under a second): each of these took 1.4-4 s here, importing torch (or
matplotlib) first to say a path does not exist or a number is out of range."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

REFUSED = [  # (command, its exit code, what its one line says)
    (["adapter", "export", "/nonexistent"], 2, "'/nonexistent' does not exist; give an AdapterLM run"),
    (["generate", "/nonexistent"], 2, "'/nonexistent' does not exist"),
    (["events", "predict", "--ckpt", "/nonexistent", "events.jsonl"], 2, "'/nonexistent' does not exist; give a run"),
    (["session", "new", "--artifacts_root", "ARTIFACTS", "--session_id", "s1", "--mu", "nan"], 2,
     "--mu must be a drift size in [0, 1e+06], got nan"),
    (["mesh", "store", "--port", "0"], 2, "--port must be in 1..65535, got 0"),
    (["session", "fork", "--artifacts_root", "ARTIFACTS", "--parent_session_id", "s1", "--child_session_id", "s1"],
     2, "fork needs a child id other than its parent's, got 's1' for both"),
    (["compare", "/nonexistent"], 2, "/nonexistent"),
    (["window", "plan", "/nonexistent"], 2, "'/nonexistent' holds no window program"),
    (["window", "open", "/nonexistent", "w-0001"], 2, "'/nonexistent' holds no window program"),
    (["window", "init", "ARTIFACTS", "--config", "/nonexistent.yaml", "--base", "ARTIFACTS"], 2,
     "window config '/nonexistent.yaml' not found"),
    (["ckpt", "consolidate", "RUN", "--out", "/etc/passwd"], 2, "--out '/etc/passwd' is a file; give a directory"),
    (["ckpt", "consolidate", "RUN"], 2, "is not sharded; it already is one model.safetensors"),
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lit_psion.core.run import read_latest
    from tests.helpers import fit

    root = tmp_path_factory.mktemp("runs")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "2") == 0
    return root / read_latest(root)


@pytest.mark.parametrize(("args", "code", "says"), REFUSED, ids=[" ".join(r[0][:3]) for r in REFUSED])
def test_a_refusal_needing_no_model_is_said_before_torch_is_imported(request: pytest.FixtureRequest, tmp_path: Path,
                                                                     args: list[str], code: int,
                                                                     says: str) -> None:  # fmt: skip
    places = {"ARTIFACTS": str(tmp_path), "RUN": str(request.getfixturevalue("run")) if "RUN" in args else ""}
    args = [places.get(arg, arg) for arg in args]
    command = [sys.executable, "-X", "importtime", "-m", "lit_psion", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    lines = result.stderr.splitlines()
    imported = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    said = [line for line in lines if not line.startswith("import time:")]
    assert result.returncode == code, said
    assert not {"torch", "lightning", "matplotlib"} & imported, sorted({"torch", "lightning", "matplotlib"} & imported)
    assert len(said) == 1 and says in said[0], said
