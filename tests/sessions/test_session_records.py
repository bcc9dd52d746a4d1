"""A session store's records: broken ones are one line, signals stop a run cleanly, and verify checks every file."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lit_psion.cli import main
from lit_psion.core import read_json, sha256_bytes
from tests.sessions.helpers import meta_edit, rerecorded_state, session, session_process

BROKEN_RECORDS = [  # (the file, what it is made to hold)
    ("sessions/index.json", "[]"),
    ("sessions/index.json", "{not json"),
    ("sessions/index.json", '{"sessions": []}'),
    ("sessions/s1/meta.json", "{not json"),
    ("sessions/s1/meta.json", '{"session_id": "s1"}'),
    ("base/base_meta.json", "{}"),
    ("base/base_meta.json", "\x00"),
]


@pytest.mark.parametrize(("record", "content"), BROKEN_RECORDS,
                         ids=["index list", "index garbled", "index sessions list", "meta garbled", "meta partial",
                              "base meta empty", "base meta binary"])  # fmt: skip
def test_a_broken_store_record_is_one_line_and_no_half_made_session(trained: Path, capsys: pytest.CaptureFixture,
                                                                      record: str, content: str) -> None:  # fmt: skip
    """Each crashed (exit 1); a new session against a broken registry left a meta.json the registry never listed."""
    (trained / record).write_text(content)
    before = sorted(p.relative_to(trained) for p in trained.rglob("*"))
    root = ("--artifacts_root", str(trained))
    commands = [["run", *root, "--session_id", "s1", "--steps", "32"],
                ["fork", *root, "--parent_session_id", "s1", "--child_session_id", "c1"]]  # fmt: skip
    for argv in commands if "s1" in record else [["new", *root, "--session_id", "n1"], *commands]:
        code = session(*argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code in (2, 5) and len(err) == 1 and "restore it from a backup" in err[0], (argv, err)
    after = sorted(p.relative_to(trained) for p in trained.rglob("*"))
    assert after == before, set(after) ^ set(before)


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (Lightning installs one when a fit starts)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        caught = next(line for line in status if line.startswith("SigCgt"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


def _signalled(writer: Any, ready: Any, signum: int, code: int) -> str:
    """Send ``signum`` to the session command ``writer`` a second after ``ready()``; its stderr, once it exits
    ``code``."""
    deadline = time.monotonic() + 120
    while not ready():
        assert time.monotonic() < deadline and writer.poll() is None
        time.sleep(0.1)
    time.sleep(1)
    writer.send_signal(signum)
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == code, err[-2000:]
    return err


@pytest.mark.parametrize(("signum", "code", "says"), [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                      (signal.SIGINT, 130, "interrupted")], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_session_run_says_so_and_commits_nothing(trained: Path, signum: int, code: int, says: str) -> None:
    """SIGTERM was exit 0 with no line (a scheduler read success), Ctrl-C exit 1 with Lightning's warning alone."""
    directory = trained / "sessions" / "s1"
    before, runs = read_json(directory / "meta.json"), set((directory / "runs").iterdir())
    writer = session_process("run", "--artifacts_root", str(trained), "--session_id", "s1", "--steps", "200000")
    training = lambda: _catches_sigterm(writer.pid) and set((directory / "runs").iterdir()) != runs  # noqa: E731
    err = _signalled(writer, training, signum, code)
    assert f"lit_psion: {says}; session 's1' keeps its state from before this run: nothing of it was committed" in err
    assert read_json(directory / "meta.json") == before


@pytest.mark.parametrize(("signum", "code", "says"), [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                      (signal.SIGINT, 130, "interrupted")], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_init_base_says_no_base_was_written(tmp_path: Path, signum: int, code: int, says: str) -> None:
    """SIGTERM before the Trainer's fit (or after it) was a silent death; Ctrl-C said "interrupted" alone."""
    root = tmp_path / "artifacts"
    writer = session_process("init-base", "--artifacts_root", str(root), "--pretrain_steps", "20000",
                             "--pretrain_batch", "2", "--pretrain_seq", "4")  # fmt: skip
    err = _signalled(writer, (root / "base").is_dir, signum, code)  # once it pretrains: the base's lock is taken
    assert err.strip().splitlines()[-1] == f"lit_psion: {says}; no base was written: run the command again", err
    assert not root.exists()


def _append(path: Path) -> None:
    path.write_text(path.read_text() + "999,0,0,0\n")


VERIFY_HARMS = [  # (what is done to the session, the file the FAIL line names, exit code)
    (lambda run: _append(run / "per_step.csv"), "per_step.csv", 5),
    (lambda run: (run.parent.parent / "metrics.json").write_text("{}"), "metrics.json", 5),
    (lambda run: (run / "mse_curve.png").unlink(), "mse_curve.png", 5),
    (lambda run: (run.parent.parent / "plastic_state.safetensors").write_bytes(b"x"), "plastic_state.safetensors", 4),
]


@pytest.mark.parametrize(("harm", "name", "code"), VERIFY_HARMS, ids=["a row appended", "metrics emptied",
                                                                      "a plot deleted", "state replaced"])  # fmt: skip
def test_session_verify_checks_every_file_meta_json_records(trained: Path, capsys: pytest.CaptureFixture,
                                                            harm: Any, name: str, code: int) -> None:  # fmt: skip
    """No command checked a run's results or metrics.json; the next run overwrote an edited metrics.json."""
    assert session("verify", "--artifacts_root", str(trained), "--session_id", "s1") == 0
    assert "checks of session s1 passed" in capsys.readouterr().out
    run = next((trained / "sessions" / "s1" / "runs").iterdir())
    harm(run)
    assert session("verify", "--artifacts_root", str(trained), "--session_id", "s1") == code
    out = capsys.readouterr().out
    assert any(line.startswith("FAIL") and name in line for line in out.splitlines()), out


FORGED_SESSIONS = [  # (case, what is done, exit code of run and verify, what the line says)
    ("artifacts a string", meta_edit(lambda m: m.update(artifacts="x")), 5, "artifacts is 'x'"),
    ("a setting in words", meta_edit(lambda m: m["settings"].update(chunk="big")), 5, "settings.chunk is 'big'"),
    ("a setting no run reads", meta_edit(lambda m: m["settings"].update(extra=1)), 5,  # passed show, verify, run
     "settings.extra is not a session setting"),
    ("runs an object", meta_edit(lambda m: m.update(runs={})), 5, "runs is {}"),
    ("an older schema", meta_edit(lambda m: m.update(schema_version=1)), 5, "schema_version is 1"),
    ("meta.json deleted", lambda root: (root / "sessions" / "s1" / "meta.json").unlink(), 5,
     "is registered in"),  # it said "no session 's1' (sessions: s1)", exit 2
    ("a state of another shape", rerecorded_state(lambda s: {**s, "P_A": torch.zeros(3, 3)}), 4, "of shape (3, 3)"),
    ("a state without P_B", rerecorded_state(lambda s: {k: v for k, v in s.items() if k != "P_B"}), 4, "lacks P_B"),
    ("a NaN state", rerecorded_state(lambda s: {**s, "P_A": s["P_A"] * float("nan")}), 4, "non-finite"),
    ("a huge drift", meta_edit(lambda m: m.update(mu=1e300)), 5, "mu is 1e+300, not a drift size"),  # exit 139
    ("a chunk of 0", meta_edit(lambda m: m["settings"].update(chunk=0)), 5, "settings.chunk is 0, out of its range"),
    ("a negative rate", meta_edit(lambda m: m["settings"].update(lr=-1.0)), 5, "settings.lr is -1.0, out of"),
    ("a rate of 0", meta_edit(lambda m: m["settings"].update(lr=0.0)), 5, "--lr must be a finite number > 0"),
    ("a buffer past the policy's", meta_edit(lambda m: m["settings"].update(buffer_len=10**9)), 5, "buffer_len"),
    ("another session's record", meta_edit(lambda m: m.update(session_id="s0")), 5,  # a copy wrote into s0
     "is session 's0''s record, not 's1''s: the directory was copied or renamed"),
    ("a run id that is a path", meta_edit(lambda m: m["runs"][0].update(run_id="../../..")), 5,  # verify read
     "it names the file or run '../../..', which is not a plain name"),  # files outside the session
    ("a run file that is a path", meta_edit(lambda m: m["runs"][0]["files"].update({"x/../../../etc": "0" * 64})), 5,
     "it names the file or run 'x/../../../etc'"),
    ("a run id empty", meta_edit(lambda m: m["runs"][0].update(run_id="")), 5, "names the file or run ''"),  # ran on
    ("a run id gone", meta_edit(lambda m: m["runs"][0].pop("run_id")), 5, "names the file or run None"),
    ("an artifact named ''", meta_edit(lambda m: m["artifacts"].update({"": "0" * 64})), 5, "file or run ''"),
    ("a run id a list", meta_edit(lambda m: m["runs"][0].update(run_id=[])), 5, "file or run []"),  # exit 1
    ("a run's files a string", meta_edit(lambda m: m["runs"][0].update(files="x")), 5, "a run's files is 'x'"),
    ("a run's files a number", meta_edit(lambda m: m["runs"][0].update(files=-1)), 5, "a run's files is -1"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "harm", "code", "says"), FORGED_SESSIONS, ids=[c[0] for c in FORGED_SESSIONS])
def test_verify_and_run_refuse_a_forged_session_alike_in_one_line(
    trained: Path, capsys: pytest.CaptureFixture, case: str, harm: Any, code: int, says: str
) -> None:
    """Each was exit 1 in run (a TypeError, an AttributeError, a shape mismatch), or an older schema ran; verify
    said every file matched while run refused (a consistent rewrite of a state and its digest)."""
    harm(trained)
    root = ("--artifacts_root", str(trained), "--session_id", "s1")
    meta_path = trained / "sessions" / "s1" / "meta.json"
    meta = meta_path.read_bytes() if meta_path.is_file() else None
    capsys.readouterr()
    assert session("run", *root, "--steps", "32") == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert session("verify", *root) == code
    captured = capsys.readouterr()
    assert says in captured.out + captured.err
    assert (meta_path.read_bytes() if meta_path.is_file() else None) == meta, "nothing written"
    assert session("list", "--artifacts_root", str(trained)) in (0, code)  # (a run's files of -1: exit 1)


SESSION_LOG_EDITS = {  # what is done to a session run's receipts.jsonl -> what `receipts verify` must say
    "untouched": (None, 0, "a session run"),
    "last receipt dropped": (lambda lines: lines[:-1], 5, "meta.json records"),
    "a body edited": (lambda lines: [lines[0].replace('"session"', '"sessiox"', 1), *lines[1:]], 5, "edited"),
    "re-recorded in meta.json after a drop": ("rerecord", 5, "meta.json records"),
}


@pytest.mark.parametrize("case", SESSION_LOG_EDITS)
def test_receipts_verify_checks_a_session_runs_log(trained: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    """A session's run directory has receipts and never a run.json: `receipts verify` checks its chain and its
    bytes against the session's record instead of asking for a run.json to restore."""
    edit, code, says = SESSION_LOG_EDITS[case]
    (run,) = (trained / "sessions" / "s1" / "runs").iterdir()
    log = run / "receipts.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    if callable(edit):
        log.write_text("".join(edit(lines)))
    elif edit == "rerecord":  # a truncation whose forger also fixed the record: the chain still verifies
        log.write_text("".join(lines[:-1]))
        meta_file = trained / "sessions" / "s1" / "meta.json"
        meta = json.loads(meta_file.read_text())
        meta["runs"][0]["files"]["receipts.jsonl"] = sha256_bytes(log.read_bytes())
        meta_file.write_text(json.dumps(meta))
        code, says = 0, "a session run"  # outside what a record in meta.json can prove (docs/sessions.md)
    assert main(["receipts", "verify", str(run)]) == code
    out = capsys.readouterr()
    assert says in (out.out + out.err) and "run.json" not in out.err


def test_a_drift_too_large_for_the_dynamics_is_refused_when_the_session_is_made(trained: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    """--mu 1e300 made a session whose run died in the linear-algebra library (exit 139)."""
    capsys.readouterr()
    assert session("new", "--artifacts_root", str(trained), "--session_id", "s9", "--mu", "1e300") == 2
    assert "--mu must be a drift size in [0, 1e+06], got 1e+300" in capsys.readouterr().err
    assert not (trained / "sessions" / "s9").exists()


def test_verify_fails_a_file_added_to_a_run_and_notes_a_run_that_never_committed(trained: Path,
                                                                                capsys: pytest.CaptureFixture) -> None:
    """A file added to a recorded run passed (the entry covers every file the run wrote); a run directory a killed
    run left behind went unmentioned."""
    runs = trained / "sessions" / "s1" / "runs"
    (committed,) = runs.iterdir()
    (runs / "20991231-000000-abcdef").mkdir()  # what a run killed before its commit leaves
    (runs / "20991231-000000-abcdef" / "per_step.csv").write_text("step\n")
    root = ("--artifacts_root", str(trained), "--session_id", "s1")
    capsys.readouterr()
    assert session("verify", *root) == 0
    assert "note runs/20991231-000000-abcdef: a run meta.json does not record" in capsys.readouterr().out
    (runs / "20991231-000000-abcdef" / "receipts.jsonl").write_text("{}\n")
    assert main(["receipts", "verify", str(runs / "20991231-000000-abcdef")]) == 5  # said "stopped as it started"
    assert "is a session run its session's meta.json does not record" in capsys.readouterr().err
    (committed / ".DS_Store").write_text("a file manager's")  # hidden: nothing reads it
    assert session("verify", *root) == 0
    (committed / "notes.txt").write_text("added")
    assert session("verify", *root) == 5
    assert f"FAIL runs/{committed.name}/notes.txt: not a file of the run meta.json records" in capsys.readouterr().out


def test_an_artifacts_root_that_is_a_file_and_a_run_too_long_to_hold_are_one_line(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """init-base into a file was exit 1 (NotADirectoryError); --steps 99999999999 was exit 1 allocating 1.6 TB."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for command in (("init-base",), ("list",), ("verify", "--session_id", "s1")):
        capsys.readouterr()
        assert session(*command, "--artifacts_root", str(afile)) == 2
        assert f"--artifacts_root {str(afile)!r} is a file, not a directory" in capsys.readouterr().err
    assert afile.read_text() == "x"
    capsys.readouterr()
    assert session("run", "--artifacts_root", str(trained), "--session_id", "s1", "--steps", "99999999999") == 2
    assert "--steps 99999999999 is more than one run takes (10,000,000)" in capsys.readouterr().err


def test_list_reads_each_sessions_record_and_says_what_the_index_gets_wrong(trained: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    """list printed index.json as fact: a forged mu, a ghost session; with the index deleted it listed nothing."""
    index_path = trained / "sessions" / "index.json"
    index = read_json(index_path)
    index["sessions"]["s1"]["mu"] = 9.9
    index["sessions"]["ghost"] = {**index["sessions"]["s1"]}
    index_path.write_text(json.dumps(index))
    capsys.readouterr()
    assert session("list", "--artifacts_root", str(trained)) == 0
    out, err = capsys.readouterr()
    mu = read_json(trained / "sessions" / "s1" / "meta.json")["mu"]
    (row,) = [line for line in out.splitlines() if line.startswith("s1 ")]
    assert str(mu) in row and "9.9" not in row and "ghost" not in out
    assert "index.json registers session 'ghost', which has no meta.json here" in err
    index_path.unlink()
    assert session("list", "--artifacts_root", str(trained)) == 0
    out, err = capsys.readouterr()
    assert any(line.startswith("s1 ") for line in out.splitlines()) and "'s1' is not in index.json" in err


def test_a_session_without_limits_made_by_new_runs_and_verifies(trained: Path) -> None:
    """--rollback_tol inf (no limit) passed new, then run and verify refused the meta.json it wrote (not finite)."""
    root = ("--artifacts_root", str(trained))
    assert session("new", *root, "--session_id", "free", "--rollback_tol", "inf", "--grad_norm_max", "inf") == 0
    assert session("run", *root, "--session_id", "free", "--steps", "64") == 0
    assert session("verify", *root, "--session_id", "free") == 0


def test_verify_tells_a_pending_commit_from_damage_and_a_damaged_staging_is_one_line(
    trained: Path, capsys: pytest.CaptureFixture
) -> None:
    """After a kill mid-install (meta.json already names the new files, still staged), verify printed FAIL for the
    session's state, exit 4: the state was sound, and the next run or fork installs it. A stray `.pending-x` file
    (or one holding a directory) was exit 1 (NotADirectoryError) in run and fork; verify of a session a run is
    writing reported damage, not the writer."""
    from lit_psion.core.lock import RunLock

    directory = trained / "sessions" / "s1"
    staging = directory / ".pending-crash"
    staging.mkdir()
    for name in ("plastic_state.safetensors", "optim_state.pt"):
        shutil.copy(directory / name, staging / name)
        (directory / name).write_bytes(b"the state before the commit")
    capsys.readouterr()
    assert session("verify", "--artifacts_root", str(trained), "--session_id", "s1") == 0
    out = capsys.readouterr().out
    assert "note .pending-crash: a commit meta.json records, not yet installed" in out and "FAIL" not in out, out
    for path in staging.iterdir():  # what the next writer does
        path.replace(directory / path.name)
    staging.rmdir()
    assert session("verify", "--artifacts_root", str(trained), "--session_id", "s1") == 0
    with RunLock(directory, purpose="session run s1"):
        assert session("verify", "--artifacts_root", str(trained), "--session_id", "s1") == 8
        assert "is being written by pid" in capsys.readouterr().err
    (directory / ".pending-stray").write_text("not a staging directory")
    for command in (["run", "--session_id", "s1", "--steps", "32"],
                    ["fork", "--parent_session_id", "s1", "--child_session_id", "s2"]):
        assert session(command[0], "--artifacts_root", str(trained), *command[1:]) == 5, command
        assert ".pending-stray' is not a commit this session staged" in capsys.readouterr().err
    (directory / ".pending-stray").unlink()
    shutil.rmtree(directory / "runs")
    (directory / "runs").write_text("a file where the runs directory was")  # was exit 1 (NotADirectoryError)
    assert session("run", "--artifacts_root", str(trained), "--session_id", "s1", "--steps", "32") == 5
    assert "is not the session's runs directory" in capsys.readouterr().err


def test_a_kill_between_meta_json_and_the_index_is_mended_by_the_next_writer(trained: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """index.json kept the entry of before the commit (runs 0 where meta.json says 1) for good: nothing mended it."""
    import json

    index_path = trained / "sessions" / "index.json"
    index = json.loads(index_path.read_text())
    current = index["sessions"]["s1"]
    index["sessions"]["s1"] = {**current, "runs": []}  # the entry as it was before the run's commit
    index_path.write_text(json.dumps(index))
    assert session("fork", "--artifacts_root", str(trained), "--parent_session_id", "s1", "--child_session_id",
                   "s2") == 0  # fmt: skip
    assert json.loads(index_path.read_text())["sessions"]["s1"] == current


def test_a_kill_inside_an_atomic_write_leaves_no_temp_file_after_the_next_writer(trained: Path) -> None:
    """A SIGKILL between an atomic write's temp file and its rename left ``.meta.json.<random>.tmp`` (a whole copy of
    the uncommitted meta.json) in the session directory for good; the next writer, holding the lock, removes it."""
    directory = trained / "sessions" / "s1"
    leftover = directory / ".meta.json.k1ll3d00.tmp"
    leftover.write_text((directory / "meta.json").read_text())
    kept = directory / "notes.tmp"  # not an atomic write's
    kept.write_text("mine")
    assert session("run", "--artifacts_root", str(trained), "--session_id", "s1", "--steps", "32") == 0
    assert not leftover.exists() and kept.read_text() == "mine"
    assert session("verify", "--artifacts_root", str(trained), "--session_id", "s1") == 0


def test_a_session_run_given_to_a_runs_command_names_session_verify(trained: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """`doctor` and `ckpt verify` read a session's run (receipts, no run.json) as a fit stopped as it started, and
    said to delete it."""
    run = next((trained / "sessions" / "s1" / "runs").iterdir())
    for command in (["doctor", str(run)], ["ckpt", "verify", str(run)]):
        capsys.readouterr()
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert (f"is a run of session 's1'; `python -m lit_psion session verify --artifacts_root {trained} "
                "--session_id s1` checks it") in err and "delete" not in err, err
    assert main(["receipts", "verify", str(run)]) == 0
    assert session("verify", "--artifacts_root", str(trained), "--session_id", "s1") == 0


def _put_back(root: Path, aside: Path) -> None:
    """s1 copied aside, run once more, then the copy put back (index.json still registers the later run)."""
    s1 = root / "sessions" / "s1"
    shutil.copytree(s1, aside)
    assert session("run", "--artifacts_root", str(root), "--session_id", "s1", "--steps", "32") == 0
    shutil.rmtree(s1)
    shutil.copytree(aside, s1)


UNLIKE_ITS_REGISTRATION = [  # (case, what is done, what each line says); verify and list passed the first, list the
    # second, and the next run or fork rewrote the index entry to match, erasing the only trace of either
    ("put back from an earlier copy", _put_back, "meta.json records 1 run(s), but index.json records 2: the "
     "session's directory was put back from an earlier copy; restore it from a backup"),
    ("its lineage edited", lambda root, _: meta_edit(lambda m: m.update(root_session_id="s0"))(root),
     "meta.json records root_session_id 's0', but index.json registers 's1' (the lineage was edited)"),
]


@pytest.mark.parametrize(("case", "harm", "says"), UNLIKE_ITS_REGISTRATION, ids=[c[0] for c in UNLIKE_ITS_REGISTRATION])
def test_a_session_unlike_its_registration_is_refused_not_reregistered(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str, harm: Any, says: str
) -> None:
    harm(trained, tmp_path / "s1-earlier")
    index = (trained / "sessions" / "index.json").read_bytes()
    root = ("--artifacts_root", str(trained))
    capsys.readouterr()
    assert session("verify", *root, "--session_id", "s1") == 5
    assert f"FAIL index.json: session 's1''s {says}" in capsys.readouterr().out
    assert session("list", *root) == 5
    captured = capsys.readouterr()
    assert "s1" in captured.out and says in captured.err
    for argv in (["run", *root, "--session_id", "s1", "--steps", "32"],
                 ["fork", *root, "--parent_session_id", "s1", "--child_session_id", "c1"]):  # fmt: skip
        assert session(*argv) == 5, argv
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert says in line, line
    assert (trained / "sessions" / "index.json").read_bytes() == index
    assert not (trained / "sessions" / "c1").exists()


def _edited_and_rerecorded(root: Path) -> None:
    """A receipt's body edited in place, and the log's new digest written into meta.json (which is unsigned)."""
    (run,) = (root / "sessions" / "s1" / "runs").iterdir()
    log = run / "receipts.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join([lines[0].replace('"session"', '"sessiox"', 1), *lines[1:]]))
    meta_edit(lambda m: m["runs"][0]["files"].update({"receipts.jsonl": sha256_bytes(log.read_bytes())}))(root)


RERECORDED = [  # (case, what is done, what the FAIL line says): each passed "all N checks of session s1"
    ("a receipt edited, its log re-recorded", _edited_and_rerecorded, "receipts.jsonl chain: line 1: edited"),
    ("a run recorded twice", meta_edit(lambda m: m["runs"].append(m["runs"][0])), "meta.json records this run twice"),
    ("its lineage edited", meta_edit(lambda m: m.update(parent_session_id="s0", root_session_id="s0")),
     "parent_session_id 's0', but index.json registers None and root_session_id 's0', but index.json registers 's1'"),
]


@pytest.mark.parametrize(("case", "harm", "says"), RERECORDED, ids=[c[0] for c in RERECORDED])
def test_verify_holds_each_run_to_its_own_chain_and_to_one_record(trained: Path, capsys: pytest.CaptureFixture,
                                                                  case: str, harm: Any, says: str) -> None:  # fmt: skip
    root = ("verify", "--artifacts_root", str(trained), "--session_id", "s1")
    assert session(*root) == 0
    assert "receipts.jsonl chain: its chain verifies" in capsys.readouterr().out
    harm(trained)
    assert session(*root) == 5
    out = capsys.readouterr().out
    assert any(line.startswith("FAIL") and says in line for line in out.splitlines()), out


REGISTRY_IN_THE_WAY = [  # (what is put in place, its exit code, the line): each was exit 1 (IsADirectoryError) after
    # meta.json, the commit point, was written: a session its registry never listed, refused as existing on a retry
    ("sessions/.index.lock", 2, "is not the sessions' lock file (a directory, a link or a FIFO in its place); remove"),
    ("sessions/index.json", 5, "is not a file (a directory or a link in its place); restore index.json"),
]


@pytest.mark.parametrize(("name", "code", "says"), REGISTRY_IN_THE_WAY, ids=["lock a directory", "index a directory"])
def test_a_registry_that_is_not_a_file_is_refused_before_anything_is_written(
    trained: Path, capsys: pytest.CaptureFixture, name: str, code: int, says: str
) -> None:
    path = trained / name
    if path.exists():
        path.unlink()
    path.mkdir()
    before = sorted(p.relative_to(trained) for p in trained.rglob("*") if not p.name.startswith("."))
    root = ("--artifacts_root", str(trained))
    for argv in (["new", *root, "--session_id", "n2"], ["run", *root, "--session_id", "s1", "--steps", "32"],
                 ["fork", *root, "--parent_session_id", "s1", "--child_session_id", "c1"]):  # fmt: skip
        capsys.readouterr()
        assert session(*argv) == code, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], (argv, err)
    assert sorted(p.relative_to(trained) for p in trained.rglob("*") if not p.name.startswith(".")) == before
    path.rmdir()
    assert session("new", *root, "--session_id", "n2") == 0  # nothing of the refused one stands in the way


def test_list_says_an_unreadable_registry_and_exits_5(trained: Path, capsys: pytest.CaptureFixture) -> None:
    """It listed the sessions and exited 0 without a word, where run, new and verify refuse the registry."""
    (trained / "sessions" / "index.json").write_text("{")
    capsys.readouterr()
    assert session("list", "--artifacts_root", str(trained)) == 5
    captured = capsys.readouterr()
    assert "s1" in captured.out and "index.json' cannot be read" in captured.err and "restore it" in captured.err


@pytest.mark.parametrize("damage", ["removed", "a directory"])
def test_list_exits_5_for_a_session_whose_meta_json_is_gone(trained: Path, capsys: pytest.CaptureFixture,
                                                            damage: str) -> None:  # fmt: skip
    """list printed an empty table and a note, exit 0, while show and verify said exit 5 of the same session."""
    meta = trained / "sessions" / "s1" / "meta.json"
    meta.unlink()
    if damage == "a directory":
        meta.mkdir()
    capsys.readouterr()
    assert session("list", "--artifacts_root", str(trained)) == 5
    err = capsys.readouterr().err
    said = "its meta.json is missing" if damage == "removed" else "its meta.json is not a file"
    assert f"session 's1' is not listed: session 's1' is registered in {str(trained)!r}, but {said}" in err, err
    assert session("show", "--artifacts_root", str(trained), "--session_id", "s1") == 5
    assert said in capsys.readouterr().err
