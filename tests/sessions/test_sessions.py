"""Sessions (seed 000): the documented demo, signatures, lineage, forks, and safe artifacts."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.sessions.cli import build_parser
from lit_psion.sessions.store import Store
from lit_psion.strategies import TransactionPolicy
from tests.helpers import REPO_ROOT

SMALL_BASE = ["--pretrain_steps", "150", "--pretrain_batch", "16", "--pretrain_seq", "16"]


def session(*args: str) -> int:
    return main(["session", *args])


def demo_commands() -> list[list[str]]:
    text = (REPO_ROOT / "docs" / "sessions.md").read_text()
    block = text.split("## The demo", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.strip().splitlines()]


def test_the_documented_demo_runs_and_updates_beat_no_updates(tmp_path: Path) -> None:
    outputs = []
    for command in demo_commands():
        assert command[:4] == ["python", "-m", "lit_psion", "session"]
        argv = [sys.executable, *command[1:]]
        argv[argv.index("--artifacts_root") + 1] = str(tmp_path / "artifacts")
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append(result.stdout)
    assert sum("[metrics]" in out for out in outputs) == 2
    root = tmp_path / "artifacts"
    s1 = read_json(root / "sessions" / "s1" / "metrics.json")
    assert s1["final"]["mse_with_update"] < 0.5 * s1["final"]["mse_no_update"]  # the pinned seeds make this exact
    (run,) = (root / "sessions" / "s1" / "runs").iterdir()
    assert {p.name for p in run.iterdir()} >= {"per_step.csv", "update_events.json", "mse_curve.png"}
    assert (run / "mse_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert len((run / "per_step.csv").read_text().splitlines()) == 601
    index = read_json(root / "sessions" / "index.json")["sessions"]
    assert index["s1b"]["parent_session_id"] == "s1" and index["s1b"]["root_session_id"] == "s1"
    assert "s1b" in outputs[-1] and "s1" in outputs[-1]


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    assert session("init-base", "--artifacts_root", str(root), *SMALL_BASE) == 0
    assert session("new", "--artifacts_root", str(root), "--session_id", "s1") == 0
    assert session("run", "--artifacts_root", str(root), "--session_id", "s1", "--steps", "96") == 0
    return root


def test_a_session_run_receipts_its_updates_as_stage_session(trained: Path) -> None:
    (run,) = (trained / "sessions" / "s1" / "runs").iterdir()
    lines = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    receipts = [line["body"] for line in lines if line["kind"] == "transaction"]
    events = read_json(run / "update_events.json")
    assert len(receipts) == len(events) == 3  # 96 steps in chunks of 32
    assert {receipt["stage_id"] for receipt in receipts} == {"session"}
    assert [{k: v for k, v in event.items() if k != "chunk_start"} for event in events] == receipts
    assert [event["chunk_start"] for event in events] == [0, 32, 64]


def test_the_session_policy_defaults_are_the_transaction_policy_defaults() -> None:
    parsed = build_parser().parse_args(["new", "--session_id", "s"])
    defaults = TransactionPolicy()
    assert (parsed.rollback_tol, parsed.grad_norm_max, parsed.state_norm_max) == (
        defaults.rollback_tol, defaults.grad_norm_max, defaults.state_norm_max)  # fmt: skip


def test_fork_lineage_and_copy_versus_reset_optimizer(trained: Path) -> None:
    root = ("--artifacts_root", str(trained))
    assert session("fork", *root, "--parent_session_id", "s1", "--child_session_id", "copy") == 0
    assert session("fork", *root, "--parent_session_id", "copy", "--child_session_id", "grandchild",
                   "--copy_optimizer", "0", "--reset_optimizer", "1") == 0  # fmt: skip
    index = read_json(trained / "sessions" / "index.json")["sessions"]
    assert (index["grandchild"]["parent_session_id"], index["grandchild"]["root_session_id"]) == ("copy", "s1")
    sessions = trained / "sessions"
    parent = torch.load(sessions / "s1" / "optim_state.pt", weights_only=True)
    copied = torch.load(sessions / "copy" / "optim_state.pt", weights_only=True)
    assert parent["state"] and all(torch.equal(copied["state"][k]["momentum_buffer"], v["momentum_buffer"])
                                   for k, v in parent["state"].items())  # fmt: skip
    assert torch.load(sessions / "grandchild" / "optim_state.pt", weights_only=True) == {}
    # the same plastic weights and data, different inertia: the first update differs
    assert (
        session("fork", *root, "--parent_session_id", "s1", "--child_session_id", "reset", "--reset_optimizer", "1")
        == 0
    )  # fmt: skip  (one flag implies the other)
    for child in ("copy", "reset"):
        assert session("run", *root, "--session_id", child, "--steps", "32", "--seed", "5") == 0
    from safetensors.torch import load_file

    after = {child: load_file(sessions / child / "plastic_state.safetensors") for child in ("copy", "reset")}
    assert not torch.equal(after["copy"]["P_A"], after["reset"]["P_A"])


def test_a_session_from_another_base_is_refused(trained: Path, capsys: pytest.CaptureFixture) -> None:
    root = ("--artifacts_root", str(trained))
    assert session("init-base", *root, *SMALL_BASE, "--env_seed", "5") == 0  # a different base model
    assert session("run", *root, "--session_id", "s1", "--steps", "32") == 4
    assert "belongs to a different base model" in capsys.readouterr().err


def test_a_tampered_base_checkpoint_is_refused(trained: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint = trained / "base" / "base_checkpoint.safetensors"
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 1
    checkpoint.write_bytes(bytes(data))
    assert session("run", "--artifacts_root", str(trained), "--session_id", "s1", "--steps", "32") == 4
    assert "does not match base_meta.json" in capsys.readouterr().err


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_pickle_in_optimizer_state_is_never_executed(trained: Path, capsys: pytest.CaptureFixture) -> None:
    marker = trained / "pwned"
    torch.save({"state": _Payload(marker)}, trained / "sessions" / "s1" / "optim_state.pt")
    assert session("run", "--artifacts_root", str(trained), "--session_id", "s1", "--steps", "32") == 4
    assert not marker.exists()
    assert "refusing to load it" in capsys.readouterr().err


def test_bad_arguments_are_one_line_errors(trained: Path, capsys: pytest.CaptureFixture) -> None:
    root = ("--artifacts_root", str(trained))
    cases = [
        (["run", *root, "--session_id", "missing"], "no session 'missing'"),
        (["new", *root, "--session_id", "s1"], "already exists"),
        (["new", *root, "--session_id", "../escape"], "is not valid"),
        (["fork", *root, "--parent_session_id", "s1", "--child_session_id", "x", "--reset_optimizer", "1",
          "--copy_optimizer", "1"], "exactly one of"),
        (["new", *root, "--session_id", "s2", "--grad_norm_max", "0"], "grad_norm_max"),
        (["run", "--artifacts_root", str(trained / "empty"), "--session_id", "s1"], "no base model"),
    ]  # fmt: skip
    for argv, message in cases:
        assert session(*argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_concurrent_list_never_sees_a_torn_index(trained: Path) -> None:
    store, errors, done = Store(trained), [], threading.Event()
    meta = read_json(trained / "sessions" / "s1" / "meta.json")

    def write() -> None:
        for i in range(40):
            store.register({**meta, "session_id": f"w{i}", "runs": [{"padding": "x" * 2000}] * 5})
        done.set()

    def read() -> None:
        while not done.is_set():
            try:
                json.loads((trained / "sessions" / "index.json").read_text())
            except json.JSONDecodeError as error:  # a torn file
                errors.append(error)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(read_json(trained / "sessions" / "index.json")["sessions"]) == 41


def test_every_artifact_load_is_weights_only() -> None:
    source = "\n".join(p.read_text() for p in (REPO_ROOT / "lit_psion" / "sessions").glob("*.py"))
    calls = re.findall(r"torch\.load\(([^)]*)\)", source)
    assert calls and all("weights_only=True" in call for call in calls)
