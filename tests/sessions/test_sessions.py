"""Sessions (seed 000): the documented demo, signatures, lineage, forks, and safe artifacts."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lit_psion.core import read_json, sha256_file
from lit_psion.sessions import commands
from lit_psion.sessions.cli import build_parser
from lit_psion.sessions.store import Store
from lit_psion.strategies import TransactionPolicy
from tests.helpers import REPO_ROOT
from tests.sessions.helpers import SMALL_BASE, session
from tests.sessions.helpers import session_process as _session_process


def demo_commands() -> list[list[str]]:
    text = (REPO_ROOT / "docs" / "sessions.md").read_text()
    block = text.split("## The demo", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.strip().splitlines()]


@pytest.mark.slow  # the whole documented demo, about 40 s
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
    after = {child: load_file(sessions / child / "plastic_state.safetensors") for child in ("copy", "reset")}
    assert not torch.equal(after["copy"]["P_A"], after["reset"]["P_A"])


def test_a_session_from_another_base_is_refused(trained: Path, capsys: pytest.CaptureFixture) -> None:
    root = ("--artifacts_root", str(trained))
    base = {path.name: path.read_bytes() for path in (trained / "base").iterdir() if path.is_file()}
    assert session("init-base", *root, *SMALL_BASE, "--env_seed", "5") == 2  # it silently replaced the base
    assert "already holds a base model, which 1 session(s) were made for (s1)" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in (trained / "base").iterdir() if path.is_file()} == base
    shutil.rmtree(trained / "base")  # a different base put in its place (init-base refuses to make one there)
    assert session("init-base", "--artifacts_root", str(trained.parent / "o"), *SMALL_BASE, "--env_seed", "5") == 0
    shutil.copytree(trained.parent / "o" / "base", trained / "base")
    assert session("run", *root, "--session_id", "s1", "--steps", "32") == 4
    assert "belongs to a different base model" in capsys.readouterr().err
    assert session("verify", *root, "--session_id", "s1") == 4  # it said "ok" for the new base
    assert "FAIL base/base_checkpoint.safetensors" in capsys.readouterr().out


def test_a_tampered_base_checkpoint_is_refused(trained: Path, capsys: pytest.CaptureFixture) -> None:
    checkpoint = trained / "base" / "base_checkpoint.safetensors"
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 1
    checkpoint.write_bytes(bytes(data))
    assert session("run", "--artifacts_root", str(trained), "--session_id", "s1", "--steps", "32") == 4
    assert "does not match base_meta.json" in capsys.readouterr().err
    assert session("fork", "--artifacts_root", str(trained), "--parent_session_id", "s1", "--child_session_id",
                   "c1") == 4  # fmt: skip  (it forked, and only the child's first run refused)
    assert "does not match base_meta.json" in capsys.readouterr().err
    assert not (trained / "sessions" / "c1").exists()


@pytest.mark.parametrize("damage", ["missing", "flipped"])
def test_a_fork_with_a_fresh_optimizer_still_refuses_a_damaged_parent(trained: Path, capsys: pytest.CaptureFixture,
                                                                     damage: str) -> None:  # fmt: skip
    """`fork --reset_optimizer 1` made a child of a parent whose optim_state.pt was missing or altered: it never
    read the file, so the damage spread to a child that `session verify` could not trace back."""
    state = trained / "sessions" / "s1" / "optim_state.pt"
    if damage == "missing":
        state.unlink()
    else:
        state.write_bytes(state.read_bytes()[:-1] + bytes([state.read_bytes()[-1] ^ 1]))
    capsys.readouterr()
    assert session("fork", "--artifacts_root", str(trained), "--parent_session_id", "s1", "--child_session_id", "c1",
                   "--reset_optimizer", "1") == 4  # fmt: skip
    assert "optim_state.pt" in capsys.readouterr().err
    assert not (trained / "sessions" / "c1").exists()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_pickle_in_optimizer_state_is_never_executed(trained: Path, capsys: pytest.CaptureFixture) -> None:
    marker = trained / "pwned"
    torch.save({"state": _Payload(marker)}, trained / "sessions" / "s1" / "optim_state.pt")
    record_digest(trained, "s1", "optim_state.pt")  # an attacker who rewrites meta.json too meets weights_only
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
        (["new", *root, "--session_id", "s2", "--gate_chunks", "-1"], "gate_chunks must be >= 0"),
        (["run", "--artifacts_root", str(trained / "empty"), "--session_id", "s1"], "no base model"),
        (["new", *root, "--session_id", "index.json"], "the name of the sessions' registry"),
        (["fork", *root, "--parent_session_id", "s1", "--child_session_id", "index.json"], "sessions' registry"),
        (["new", *root, "--session_id", "s2", "--lr", "nan"], "--lr must be a finite number > 0 and at most 1e+30, "
         "got nan"),
        (["new", *root, "--session_id", "s2", "--lr", "inf"], "--lr must be a finite number > 0 and at most 1e+30, "
         "got inf"),
        (["new", *root, "--session_id", "s2", "--lr", "1e300"], "--lr must be a finite number > 0 and at most 1e+30"),
        (["new", *root, "--session_id", "s2", "--momentum", "5"], "--momentum must be in [0, 1)"),
        (["new", *root, "--session_id", "s2", "--ns_steps", "0"], "--ns_steps (Newton-Schulz iterations) must be"),
        (["init-base", "--artifacts_root", str(trained / "other"), "--lr", "-1"], "--lr must be a finite number"),
    ]  # fmt: skip
    before = sorted(p.relative_to(trained) for p in trained.rglob("*"))
    for argv, message in cases:
        assert session(*argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert sorted(p.relative_to(trained) for p in trained.rglob("*")) == before  # nothing made, not even a lock


def test_list_and_show_answer_from_json_without_torch_or_lightning(trained: Path) -> None:
    root = ("--artifacts_root", str(trained))
    for args in (("list", *root), ("show", *root, "--session_id", "s1")):
        command = [sys.executable, "-X", "importtime", "-m", "lit_psion", "session", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = result.stderr.splitlines()
        imported = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
        assert not {"torch", "lightning"} & imported, args
        assert "s1" in result.stdout
    shown = subprocess.run([sys.executable, "-m", "lit_psion", "session", "show", *root, "--session_id", "s1"],
                           capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)  # fmt: skip
    assert json.loads(shown.stdout) == read_json(trained / "sessions" / "s1" / "meta.json")


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


# -- artifact digests ------------------------------------------------------------------------------


def record_digest(root: Path, session_id: str, name: str) -> None:
    """Re-record ``name``'s sha256 in meta.json, as someone who edits both files would."""
    path = root / "sessions" / session_id / "meta.json"
    meta = read_json(path)
    meta["artifacts"][name] = sha256_file(path.parent / name)
    path.write_text(json.dumps(meta))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def _nan_plastic(directory: Path) -> None:
    tensors = load_file(directory / "plastic_state.safetensors")
    tensors["P_A"][0, 0] = float("nan")
    save_file(tensors, directory / "plastic_state.safetensors")
    record_digest(directory.parents[1], directory.name, "plastic_state.safetensors")


def _inf_momentum(directory: Path) -> None:
    state = torch.load(directory / "optim_state.pt", weights_only=True)
    next(iter(state["state"].values()))["momentum_buffer"][0, 0] = float("inf")
    torch.save(state, directory / "optim_state.pt")
    record_digest(directory.parents[1], directory.name, "optim_state.pt")


def _forget_digest(directory: Path) -> None:
    meta = read_json(directory / "meta.json")
    del meta["artifacts"]["plastic_state.safetensors"]
    (directory / "meta.json").write_text(json.dumps(meta))


def _symlink_to_a_copy(path: Path) -> None:
    copy = path.with_name("elsewhere-" + path.name)
    path.rename(copy)
    path.symlink_to(copy.name)


def _append_event(directory: Path) -> None:
    with open(directory / "update_events.jsonl", "a") as handle:
        handle.write('{"decision": "commit", "run_id": "forged"}\n')


TAMPERED = {  # case: (tamper, the file named, what the one line says, the commands that use the file)
    "plastic-byte-flipped": (lambda d: _flip_last_byte(d / "plastic_state.safetensors"), "plastic_state.safetensors",
                             "does not match its meta.json", ("run", "fork")),
    "plastic-deleted": (lambda d: (d / "plastic_state.safetensors").unlink(), "plastic_state.safetensors",
                        "got missing", ("run", "fork")),
    "plastic-nan-digest-rerecorded": (_nan_plastic, "plastic_state.safetensors", "non-finite values: P_A (1 of",
                                      ("run", "fork")),
    "plastic-digest-deleted": (_forget_digest, "plastic_state.safetensors", "records no sha256", ("run", "fork")),
    "optim-byte-flipped": (lambda d: _flip_last_byte(d / "optim_state.pt"), "optim_state.pt",
                           "does not match its meta.json", ("run", "fork")),
    "optim-inf-digest-rerecorded": (_inf_momentum, "optim_state.pt", "non-finite values: state.", ("run", "fork")),
    "events-appended": (_append_event, "update_events.jsonl", "does not match its meta.json", ("run",)),
    "plastic-symlinked": (lambda d: _symlink_to_a_copy(d / "plastic_state.safetensors"), "plastic_state.safetensors",
                          "got a symbolic link", ("run", "fork")),  # it said "got missing" of a file that is there
    "events-deleted": (lambda d: (d / "update_events.jsonl").unlink(), "update_events.jsonl", "got missing",
                       ("run",)),
}  # fmt: skip
RECORDS = ("update_events.jsonl",)
"""The session files that are records, not states: refused with exit 5 (evidence), the states with 4."""
CASES = [(case, command) for case, entry in TAMPERED.items() for command in entry[3]]


@pytest.mark.parametrize(("case", "command"), CASES, ids=[f"{case}-{command}" for case, command in CASES])
def test_a_tampered_or_non_finite_session_artifact_is_refused_before_use(
    case: str, command: str, trained: Path, capsys: pytest.CaptureFixture
) -> None:
    tamper, name, message, _ = TAMPERED[case]
    directory = trained / "sessions" / "s1"
    recorded = read_json(directory / "meta.json")["artifacts"].get(name)
    tamper(directory)
    capsys.readouterr()
    root = ("--artifacts_root", str(trained))
    argv = ["run", *root, "--session_id", "s1", "--steps", "32"] if command == "run" else \
        ["fork", *root, "--parent_session_id", "s1", "--child_session_id", "child"]  # fmt: skip
    code = 5 if name in RECORDS else 4
    assert session(*argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(directory / name) in err[0], err
    if "does not match" in message:  # names the digest recorded and the one found
        assert recorded in err[0] and sha256_file(directory / name) in err[0]
    assert len(read_json(directory / "meta.json")["runs"]) == 1  # nothing ran
    assert not (trained / "sessions" / "child" / "meta.json").exists()
    assert "child" not in read_json(trained / "sessions" / "index.json")["sessions"]
    assert session("verify", *root, "--session_id", "s1") == code  # run and verify give one account (it was 4 and 5)


def test_every_artifact_a_run_writes_is_digest_recorded(trained: Path) -> None:
    directory, root = trained / "sessions" / "s1", ("--artifacts_root", str(trained))
    assert session("fork", *root, "--parent_session_id", "s1", "--child_session_id", "c") == 0
    for folder in (trained / "sessions" / "s1", trained / "sessions" / "c"):
        meta, on_disk = read_json(folder / "meta.json"), {p.name for p in folder.iterdir() if p.is_file()}
        assert set(meta["artifacts"]) == on_disk - {"meta.json", ".lock"} and meta["schema_version"] == 2
        for name, digest in meta["artifacts"].items():
            assert sha256_file(folder / name) == digest, (folder, name)
    (run,) = read_json(directory / "meta.json")["runs"]
    run_dir = directory / "runs" / run["run_id"]
    assert run["files"] == {p.name: sha256_file(p) for p in run_dir.iterdir()}
    assert set(run["files"]) == {"per_step.csv", "update_events.json", "mse_curve.png", "receipts.jsonl",  # and
                                 "session_run.json"}  # which session the run is in (its receipts bind it)
    child = read_json(trained / "sessions" / "c" / "meta.json")["artifacts"]
    parent = read_json(directory / "meta.json")["artifacts"]
    assert {k: child[k] for k in ("plastic_state.safetensors", "optim_state.pt")} == \
        {k: parent[k] for k in ("plastic_state.safetensors", "optim_state.pt")}  # fmt: skip


class _Crash(Exception):
    pass


@pytest.mark.parametrize("crash", ["before-meta", "after-meta"])
def test_a_run_interrupted_while_committing_leaves_the_old_or_the_new_state(
    crash: str, trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = trained / "sessions" / "s1"
    before = read_json(directory / "meta.json")
    target = "register" if crash == "before-meta" else "_install"

    def die(*args: object, **kwargs: object) -> None:
        raise _Crash

    with monkeypatch.context() as patch:
        patch.setattr(Store, target, die)
        with pytest.raises(_Crash):
            commands.run_session(Store(trained), "s1", 32, 3)
    assert list(directory.glob(".pending-*")), "the crash left a staged commit"
    middle = read_json(directory / "meta.json")
    assert middle == before if crash == "before-meta" else len(middle["runs"]) == 2
    assert session("run", "--artifacts_root", str(trained), "--session_id", "s1", "--steps", "32") == 0
    after = read_json(directory / "meta.json")
    assert len(after["runs"]) == len(middle["runs"]) + 1 and not list(directory.glob(".pending-*"))
    for name, digest in after["artifacts"].items():
        assert sha256_file(directory / name) == digest, name


# -- one writer per session ------------------------------------------------------------------------

HOLD = """
import sys
from lit_psion.core.lock import RunLock
with RunLock(sys.argv[1], purpose="holding for a test"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_locked_session_refuses_a_second_writer_with_exit_8_naming_the_holder(trained: Path) -> None:
    directory = trained / "sessions" / "s1"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    try:
        root = ("--artifacts_root", str(trained))
        writers = [_session_process("run", *root, "--session_id", "s1", "--steps", "32"),
                   _session_process("fork", *root, "--parent_session_id", "s1", "--child_session_id", "c")]  # fmt: skip
        for writer in writers:
            _, err = writer.communicate(timeout=300)
            lines = err.strip().splitlines()
            assert writer.returncode == 8, err[-2000:]
            assert len(lines) == 1 and lines[0].startswith("lit_psion: error:"), lines
            assert f"is locked by pid {holder.pid} on " in lines[0] and "(holding for a test)" in lines[0]
    finally:
        holder.communicate("")
    assert len(read_json(directory / "meta.json")["runs"]) == 1
    assert not (trained / "sessions" / "c" / "meta.json").exists()


def _holds(directory: Path, pid: int) -> bool:
    try:  # the holder writes itself in once it has the lock, and clears the record before letting go
        return json.loads((directory / ".lock").read_text()).get("pid") == pid
    except (OSError, ValueError):
        return False  # not written yet, or written by the fixture's earlier run


def _process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def _stop_while_holding_the_lock(directory: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """SIGSTOP ``process`` at a moment it holds ``directory``'s lock (checked after it stopped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"pid {process.pid} ended (exit {process.returncode}) before taking the lock"
        if _holds(directory, process.pid):
            process.send_signal(signal.SIGSTOP)
            try:
                while (state := _process_state(process.pid)) not in ("T", "t"):  # delivered asynchronously
                    assert state not in ("Z", "X", "gone") and time.monotonic() < deadline, state
                    time.sleep(0.01)
                if _holds(directory, process.pid):
                    return
            except BaseException:
                process.send_signal(signal.SIGCONT)
                raise
            process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError(f"pid {process.pid} did not take the lock on {directory} in {timeout} s")


def _session_to_files(tmp_path: Path, name: str, *args: str) -> subprocess.Popen:
    """A session command whose output goes to files (a pipe nobody reads could block it)."""
    with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
        return _session_process(*args, stdout=out, stderr=err)


@pytest.mark.slow  # default-suite budget: a multi-process scenario of ~15-35 s, run by CI's slow step
def test_concurrent_runs_of_one_session_lose_no_run(trained: Path, tmp_path: Path) -> None:
    directory = trained / "sessions" / "s1"
    root = ("--artifacts_root", str(trained))
    first = _session_to_files(tmp_path, "first", "run", *root, "--session_id", "s1", "--steps", "96", "--seed", "11")
    second = None
    try:
        _stop_while_holding_the_lock(directory, first)  # it holds the lock, mid-run, while the second one starts
        try:
            second = _session_to_files(tmp_path, "second", "run", *root, "--session_id", "s1", "--steps", "96",
                                       "--seed", "12")  # fmt: skip
            second.wait(timeout=300)
        finally:
            first.send_signal(signal.SIGCONT)
        first.wait(timeout=300)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait()
    second_err, first_out = (tmp_path / "second.err").read_text(), (tmp_path / "first.out").read_text()
    assert second.returncode == 8, second_err[-2000:]
    assert first.returncode == 0, (tmp_path / "first.err").read_text()[-2000:]
    assert f"is locked by pid {first.pid} on " in second_err and "(session run s1)" in second_err
    meta = read_json(directory / "meta.json")
    index = read_json(trained / "sessions" / "index.json")["sessions"]["s1"]
    assert len(meta["runs"]) == len(index["runs"]) == 2  # the fixture's run and the winner's, in both
    assert meta["runs"][-1]["run_id"] in first_out


def test_list_refuses_an_artifacts_root_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A mistyped root listed an empty table with exit 0."""
    assert session("list", "--artifacts_root", str(tmp_path / "artefacts")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "artefacts").exists()


def test_list_refuses_a_directory_that_is_not_an_artifacts_root(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An existing directory with neither base/ nor sessions/ (the runs root, say) listed an empty table, exit 0."""
    (tmp_path / "runs").mkdir()
    assert session("list", "--artifacts_root", str(tmp_path / "runs")) == 2
    assert "holds no base and no sessions: not an artifacts root" in capsys.readouterr().err
    assert list((tmp_path / "runs").iterdir()) == []
