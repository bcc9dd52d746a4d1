"""Adapter windows as processes and commands: contributors killed or late, interrupted transitions, and the
refusals of bad settings, ids, plans and data (the protocol itself is in test_windows.py)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import read_json, sha256_json
from lit_psion.core.chain import verify_log
from lit_psion.core.errors import EvidenceError
from lit_psion.core.run import read_latest
from lit_psion.core.windows import (
    REPLAY_REQUIRED,
)
from lit_psion.windows import adversary
from lit_psion.windows.contribute import contribute, train_adapter
from lit_psion.windows.coordinator import close_window, open_window
from lit_psion.windows.program import Program, plan_window
from tests.helpers import fit, subprocess_env
from tests.windows.helpers import SETTINGS, new_program, write_settings


def test_a_contributor_killed_mid_window_is_replayed(base: Path, tmp_path: Path) -> None:
    root = new_program(base, tmp_path / "killed", contributors=3)
    program = Program(root)
    plan = plan_window(root)
    open_window(root, plan.window_id)
    victim = subprocess.Popen([sys.executable, "-m", "lit_psion", "window", "contribute", str(root), plan.window_id,
                               "a01"], env=subprocess_env(OMP_NUM_THREADS="1"), start_new_session=True)  # fmt: skip
    for assignment in plan.assignments:
        if assignment.assignment_id != "a01":
            contribute(root, plan.window_id, assignment.assignment_id)
    time.sleep(2.0)  # into its start-up or its training: either way before it submits
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    if (program.window_dir(plan.window_id) / "contributions" / "a01").exists():
        pytest.skip("the contributor finished before it could be killed")
    close_window(root, plan.window_id)
    entry = read_json(program.window_dir(plan.window_id) / "dispositions.json")["assignments"]["a01"]
    assert (entry["disposition"], entry["reasons"]) == (REPLAY_REQUIRED, ["missing_at_seal"])
    assert verify_log(program.window_dir(plan.window_id) / "receipts.jsonl", run_id=f"window:{plan.window_id}").ok
    following = plan_window(root)
    assert [a.replay_of for a in following.assignments if a.replay_of] == [f"{plan.window_id}/a01"]
    assert main(["window", "verify", str(root)]) == 0


@pytest.mark.slow  # default-suite budget: a multi-process scenario of ~15-35 s, run by CI's slow step
def test_window_run_starts_one_contributor_process_per_assignment(base: Path, tmp_path: Path) -> None:
    root = new_program(base, tmp_path / "run", contributors=2)
    command = [sys.executable, "-m", "lit_psion", "window", "run", str(root), "--contributors", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert done.returncode == 0, done.stderr[-2000:]
    assert "w-0001: 2 contributor(s) training" in done.stdout
    program = Program(root)
    dispositions = read_json(program.window_dir("w-0001") / "dispositions.json")["assignments"]
    assert len(dispositions) == 2 and all(e["summary"].get("steps") == 8 for e in dispositions.values())
    logs = sorted(p.name for p in (program.window_dir("w-0001") / "logs").iterdir())
    assert logs == ["a00.log", "a01.log"]
    assert program.state("w-0001") == "reconciled"
    assert main(["window", "verify", str(root)]) == 0


@pytest.mark.slow
def test_a_deadline_kills_unfinished_contributors_and_their_slices_are_replayed(base: Path, tmp_path: Path) -> None:
    root = new_program(base, tmp_path / "deadline", contributors=2)
    command = [sys.executable, "-m", "lit_psion", "window", "run", str(root), "--deadline", "0.5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert done.returncode == 0, done.stderr[-2000:]
    program = Program(root)
    dispositions = read_json(program.window_dir("w-0001") / "dispositions.json")["assignments"]
    assert {(e["disposition"], tuple(e["reasons"])) for e in dispositions.values()} == {
        (REPLAY_REQUIRED, ("missing_at_seal",))}  # fmt: skip
    promotion = read_json(program.window_dir("w-0001") / "promotion.json")
    assert (promotion["decision"], promotion["reasons"]) == ("hold", ["no_accepted_contributions"])
    assert [a.replay_of for a in plan_window(root).assignments if a.replay_of] == ["w-0001/a00", "w-0001/a01"]


def test_a_reconcile_interrupted_before_its_state_is_written_runs_again(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lit_psion.windows.program as program_module

    root = new_program(base, tmp_path / "crash", contributors=3)
    program = Program(root)
    plan = plan_window(root)
    open_window(root, plan.window_id)
    for assignment in plan.assignments:
        contribute(root, plan.window_id, assignment.assignment_id)
    real = program_module.atomic_write_json

    def crash_on_reconciled(path: Path, record: object) -> None:
        if Path(path).name == "window.json" and record.get("state") == "reconciled":
            raise KeyboardInterrupt("killed between the receipts and window.json")
        real(path, record)

    monkeypatch.setattr(program_module, "atomic_write_json", crash_on_reconciled)
    with pytest.raises(KeyboardInterrupt):
        close_window(root, plan.window_id)
    monkeypatch.setattr(program_module, "atomic_write_json", real)
    assert program.state(plan.window_id) == "scored"
    promotion = close_window(root, plan.window_id)  # the same step again: same candidate, receipts appended again
    assert program.state(plan.window_id) == "reconciled"
    assert program.pointer()["revision"] == promotion["next_revision"]
    assert main(["window", "verify", str(root)]) == 0
    assert plan_window(root).input_revision == promotion["next_revision"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"lora": {"targets": ["lm_head"], "rank": 4, "alpha": "16"}}, "lora.alpha must be a number > 0"),
    ({"lora": {"targets": ["lm_head"], "rank": True, "alpha": 8.0}}, "lora.rank must be an integer >= 1"),
    ({"lora": {"targets": "lm_head", "rank": 4, "alpha": 8.0}}, "lora.targets must be a non-empty list"),
    ({"lora": {"targets": [], "rank": 4, "alpha": 8.0}}, "lora.targets must be a non-empty list"),
    ({"lora": {"targets": ["nope"], "rank": 4, "alpha": 8.0}}, "unknown LoRA target 'nope'"),
    ({"lora": {"targets": ["lm_head"], "rank": 100000, "alpha": 8.0}}, "exceeds the smallest targeted layer"),
    ({"lora": {"targets": ["lm_head"], "rank": 4, "alpha": -1}}, "lora.alpha must be a number > 0"),
    ({"lora": {"targets": ["lm_head"], "rank": 4, "alpha": 8.0, "dropout": 0.1}}, "unknown setting lora.dropout"),
    ({"gate": {"min_dleta": 0.1}}, "unknown setting gate.min_dleta"),
    ({"budget": [1, 2]}, "budget must be a mapping"),
    ({"budget": {"steps": 8, "batch_size": 8, "lr": True}}, "budget.lr must be a number > 0"),
    ({"validator": {"held_out_samples": 1.5}}, "validator.held_out_samples must be an integer"),
    ({"data": {"files": "fixtures/tiny_corpus.txt", "bogus": 1}}, "unknown setting data.bogus"),
    ({"data": {"files": "fixtures/tiny_corpus.txt", "block_size": 32, "split": "hash", "val_fraction": 0.1,
               "sample_stride": 16}}, "the base trained on the program's data with another split"),
])  # fmt: skip
def test_init_refuses_settings_a_window_could_not_run_with(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           changes: dict, message: str) -> None:  # fmt: skip
    settings = write_settings(tmp_path / "settings.yaml", **changes)
    assert main(["window", "init", str(tmp_path / "p"), "--config", str(settings), "--base", str(base)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "p" / "program.json").exists()


def test_init_names_the_programs_data_setting_for_a_missing_file(base: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """The line said "check --data.files", a flag window init does not have."""
    settings = write_settings(tmp_path / "settings.yaml", data={"files": "no/such.txt"})
    assert main(["window", "init", str(tmp_path / "p"), "--config", str(settings), "--base", str(base)]) == 3
    assert "(check window.data.files in the --config;" in capsys.readouterr().err
    assert not (tmp_path / "p" / "program.json").exists()


def test_init_refuses_an_adapter_base_a_file_root_and_a_run_root(base: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    settings = write_settings(tmp_path / "settings.yaml")
    tuned_root = tmp_path / "tuned"
    assert fit("--trainer.default_root_dir", str(tuned_root), "--trainer.max_steps", "2", "--model",
               "lit_psion.models.AdapterLM", "--model.init_args.base_checkpoint", str(base), "--data.tokenizer_file",
               str(base / "tokenizer.json")) == 0  # fmt: skip
    tuned = tuned_root / read_latest(tuned_root)
    capsys.readouterr()
    assert main(["window", "init", str(tmp_path / "p"), "--config", str(settings), "--base", str(tuned)]) == 4
    assert "is an adapter run (AdapterLM), not a base model" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["window", "init", str(tmp_path / "afile"), "--config", str(settings), "--base", str(base)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["window", "init", str(tuned), "--config", str(settings), "--base", str(base)]) == 2
    assert "is a run directory" in capsys.readouterr().err
    for inside in (tuned / "programs", tuned / "checkpoints" / "step-000002" / "prog"):  # was made; and blamed on
        assert main(["window", "init", str(inside), "--config", str(settings), "--base", str(base)]) == 2  # the
        assert "is inside run directory" in capsys.readouterr().err  # checkpoint ("holds a file ...: '.lock'")
        assert not inside.exists()


@pytest.fixture(scope="module")
def active(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A program whose w-0001 is active with all three contributions in, the corpus a copy of the fixture."""
    tmp = tmp_path_factory.mktemp("active")
    corpus = tmp / "corpus.txt"
    shutil.copy("fixtures/tiny_corpus.txt", corpus)
    data = {**SETTINGS["data"], "files": str(corpus)}
    root = new_program(base, tmp / "windows", contributors=3, data=data)
    plan = plan_window(root)
    open_window(root, plan.window_id)
    for assignment in plan.assignments:
        contribute(root, plan.window_id, assignment.assignment_id)
    return root


def _edit_plan(root: Path) -> None:
    path = root / "windows" / "w-0001" / "plan.json"
    path.write_text(path.read_text().replace('"norm_factor": 4.0', '"norm_factor": 1000000000.0'))


def _change_data(root: Path) -> None:
    corpus = Path(read_json(root / "windows" / "w-0001" / "plan.json")["data"]["files"][0])
    corpus.write_text(corpus.read_text() + "\nMore text arrives after the plan.\n")


def _symlink_aggregate(root: Path) -> None:
    (root.parent / "elsewhere").mkdir(exist_ok=True)
    (root / "windows" / "w-0001" / "aggregate").symlink_to(root.parent / "elsewhere")


@pytest.mark.parametrize(("harm", "code", "message"), [
    (_edit_plan, 5, "is not the plan w-0001 was planned with"),
    (_change_data, 3, "is not the data w-0001 was planned on"),
    (_symlink_aggregate, 5, "is a symlink"),
])  # fmt: skip
def test_close_refuses_an_edited_plan_changed_data_and_a_symlinked_directory(
    active: Path, tmp_path: Path, capsys: pytest.CaptureFixture, harm, code: int, message: str
) -> None:
    copy = tmp_path / "windows"
    shutil.copytree(active, copy, symlinks=True)
    original = Path(read_json(active / "windows" / "w-0001" / "plan.json")["data"]["files"][0])
    text = original.read_text()
    try:
        harm(copy)
        capsys.readouterr()
        assert main(["window", "close", str(copy), "w-0001"]) == code
    finally:
        original.write_text(text)  # the module's program reads it too
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "elsewhere" / "candidate").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["open", "{root}", "w-0001/"], "window id 'w-0001/' is not one"),
    (["close", "{root}", "w-0009"], "no window 'w-0009' in"),  # was exit 5, "the program's records are incomplete"
    (["open", "{root}", "w-0009"], "no window 'w-0009' in"),
    (["contribute", "{root}", "../windows/w-0001", "a00"], "is not one: window ids are w-NNNN"),
    (["contribute", "{root}", "w-0001", "../a00"], "assignment id '../a00' is not one"),
])  # fmt: skip
def test_window_and_assignment_ids_are_checked(active: Path, capsys: pytest.CaptureFixture, args: list,
                                               message: str) -> None:  # fmt: skip
    assert main(["window", *[a.format(root=active) for a in args]]) == 2
    assert message in capsys.readouterr().err


def test_a_planning_cut_short_is_planned_again_and_no_slice_is_used_twice(base: Path, tmp_path: Path) -> None:
    root = new_program(base, tmp_path / "cut", contributors=2)
    program = Program(root)
    first = plan_window(root)
    close_window(root, first.window_id)
    # A planning killed after plan.json and before window.json: the directory is not a window.
    second = plan_window(root)
    (program.window_dir(second.window_id) / "window.json").unlink()
    record = read_json(root / "program.json")
    (root / "program.json").write_text(json.dumps({**record, "next_slice": 0}))  # and a cursor that lags
    assert program.window_ids() == [first.window_id]
    again = plan_window(root)
    assert again.window_id == second.window_id
    fresh = [a.slice.index for a in again.assignments if not a.replay_of]
    assert not set(fresh) & {a.slice.index for a in first.assignments}
    assert main(["window", "verify", str(root)]) == 0


@pytest.mark.parametrize("lost", ["window.json of the latest", "window.json of an earlier", "an earlier window"])
def test_a_window_that_lost_its_record_is_refused_never_planned_over(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture, lost: str
) -> None:
    root = new_program(base, tmp_path / "lost", contributors=1)
    program = Program(root)
    for _ in range(2):
        plan = plan_window(root)
        close_window(root, plan.window_id)  # planned windows close as abandoned: every record of a finished one
    windows = root / "windows"
    if lost == "an earlier window":
        shutil.rmtree(windows / "w-0001")
    else:
        (windows / ("w-0002" if "latest" in lost else "w-0001") / "window.json").unlink()
    before = sorted(str(p.relative_to(windows)) for p in windows.rglob("*"))
    for command in (["plan", str(root)], ["status", str(root)], ["verify", str(root)]):
        assert main(["window", *command]) == 5, command
        assert "restore" in capsys.readouterr().err
    assert sorted(str(p.relative_to(windows)) for p in windows.rglob("*")) == before  # nothing planned over
    with pytest.raises(EvidenceError):
        program.window_ids()


def test_a_huge_contributor_count_is_refused_before_it_is_built(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = new_program(base, tmp_path / "huge")
    assert main(["window", "plan", str(root), "--contributors", str(10**20)]) == 3  # it used to build 10**20 ids
    assert "contributors" in capsys.readouterr().err


def test_a_zero_delta_is_quarantined_at_any_count(base: Path, tmp_path: Path) -> None:
    """An all-zero delta (a free rider) was accepted below three contributions, and with two it halved the update."""
    root = new_program(base, tmp_path / "zero", contributors=1)
    program = Program(root)
    plan = plan_window(root)
    open_window(root, plan.window_id)
    tensors, summary = train_adapter(program, plan, plan.assignments[0])
    adversary.place(program, plan, plan.assignments[0], adversary.scaled(tensors, 0.0), summary)
    promotion = close_window(root, plan.window_id)
    assert (promotion["decision"], promotion["reasons"]) == ("hold", ["no_accepted_contributions"])
    entry = read_json(program.window_dir(plan.window_id) / "dispositions.json")["assignments"]["a00"]
    assert (entry["disposition"], entry["reasons"]) == ("quarantined", ["delta_norm_outlier"])


def test_planning_while_a_window_is_open_names_the_command_that_closes_it(
    active: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["window", "plan", str(active)]) == 13
    assert f"python -m lit_psion window close {active} w-0001" in capsys.readouterr().err


def test_status_shows_each_window_its_assignments_and_the_next_command(
    active: Path, capsys: pytest.CaptureFixture
) -> None:
    capsys.readouterr()
    assert main(["window", "status", str(active)]) == 0
    status = json.loads(capsys.readouterr().out)
    window = status["windows"][-1]
    assert window["state"] == "active" and window["submitted"] == ["a00", "a01", "a02"]
    assert set(window["assignments"]) == {"a00", "a01", "a02"}
    assert status["next"].startswith(f"python -m lit_psion window close {active} w-0001")


def test_the_commands_printed_to_paste_quote_a_root_with_a_space_or_a_quote(
    active: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`window status "my windows"` said `window close my windows w-0001`: pasted, two arguments, not one."""
    import shlex

    moved = tmp_path / "it's my windows"
    shutil.copytree(active, moved)
    assert main(["window", "plan", str(moved)]) == 13
    told = capsys.readouterr().err.split("(python -m lit_psion ", 1)[1].rsplit(")", 1)[0]
    assert shlex.split(told) == ["window", "close", str(moved), "w-0001"], told
    assert main(["window", "status", str(moved)]) == 0
    told = json.loads(capsys.readouterr().out)["next"].split(" (contributors", 1)[0]
    assert shlex.split(told) == ["python", "-m", "lit_psion", "window", "close", str(moved), "w-0001"], told


def test_generate_holds_a_window_programs_tokenizer_and_settings_to_its_program_json(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """generate used the program root's tokenizer.json unchecked: one with two ids swapped printed other text, exit 0
    (window verify refused it); an emptied program.json was not noticed either."""
    import json

    root = new_program(base, tmp_path / "program")
    greedy = ["generate", str(root), "--tokens", "12", "--temperature", "0", "--prompt", "Th"]
    capsys.readouterr()
    assert main(greedy) == 0
    tokenizer = root / "tokenizer.json"
    original = tokenizer.read_bytes()
    swapped = json.loads(original)
    vocab = swapped["model"]["vocab"]
    first, second = list(vocab)[-2:]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    tokenizer.write_text(json.dumps(swapped))
    capsys.readouterr()
    assert main(greedy) == 5
    assert "is not the tokenizer the program was created with" in capsys.readouterr().err
    tokenizer.write_bytes(original)
    (root / "program.json").write_text("{}")
    assert main(greedy) == 5
    assert "program.json" in capsys.readouterr().err


def test_a_programs_data_tokenizer_and_pointer_are_held_to_its_windows(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Text added to the data after a window was planned the next window on other slices and held-out halves;
    a tokenizer swapped with its program.json record passed `window verify` and changed what generate printed; a
    pointer moved to a revision no window left (a held candidate, a copy) was served by generate, exit 0."""
    import hashlib

    corpus = tmp_path / "corpus.txt"
    shutil.copy("fixtures/tiny_corpus.txt", corpus)
    root = new_program(base, tmp_path / "pinned", contributors=1, data={**SETTINGS["data"], "files": str(corpus)})
    close_window(root, plan_window(root).window_id)
    text = corpus.read_text()
    corpus.write_text(text + "\n\nA paragraph added after the first window was planned.\n")
    capsys.readouterr()
    assert main(["window", "plan", str(root)]) == 3
    assert "changed since w-0001 was planned (data manifest" in capsys.readouterr().err
    assert Program(root).window_ids() == ["w-0001"]
    corpus.write_text(text)

    tokenizer, settings = root / "tokenizer.json", root / "program.json"
    saved = tokenizer.read_bytes(), settings.read_bytes()
    swapped = json.loads(saved[0])
    vocab = swapped["model"]["vocab"]
    first, second = list(vocab)[-2:]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    tokenizer.write_text(json.dumps(swapped))
    settings.write_text(json.dumps({**read_json(settings), "tokenizer_sha256": hashlib.sha256(
        tokenizer.read_bytes()).hexdigest()}))  # fmt: skip
    for command in (["window", "verify", str(root)], ["generate", str(root), "--tokens", "4"]):
        assert main(command) == 5, command
        assert "w-0001 was planned with tokenizer" in capsys.readouterr().err
    tokenizer.write_bytes(saved[0])
    settings.write_bytes(saved[1])

    # a setting edited with its digest recomputed passed plan, status and verify: the next window was planned on it
    values = read_json(settings)
    edited = {**values["settings"], "gate": {**values["settings"]["gate"], "min_delta": 0.5}}
    settings.write_text(json.dumps({**values, "settings": edited, "settings_sha256": sha256_json(edited)}))
    for command in ("plan", "status", "verify"):
        assert main(["window", command, str(root)]) == 5, command
        assert "not the ones the program's windows were planned with" in capsys.readouterr().err
    assert Program(root).window_ids() == ["w-0001"]
    settings.write_bytes(saved[1])

    # a window or its program given to a run's command was "a run stopped as it started: delete it"
    window = root / "windows" / "w-0001"
    for given, names in ((window, "a window of an adapter window program"), (root, "an adapter window program")):
        for command in (["doctor", str(given)], ["ckpt", "verify", str(given)]):
            assert main(command) == 2, command
            err = capsys.readouterr().err
            assert names in err and f"window verify {root}` checks it" in err and "delete" not in err, err
    assert main(["receipts", "verify", str(window)]) == 0
    assert "an adapter window's log" in capsys.readouterr().out
    log = window / "receipts.jsonl"
    kept = log.read_bytes()
    log.write_bytes(kept.replace(b'"planned"', b'"active"', 1))
    assert main(["receipts", "verify", str(window)]) == 5
    log.write_bytes(kept.splitlines(keepends=True)[0])  # cut to its first receipt: window.json's head is gone
    assert main(["receipts", "verify", str(window)]) == 5
    assert "truncated" in capsys.readouterr().err
    log.write_bytes(kept)

    copy = root / "revisions" / "copy"
    shutil.copytree(root / "revisions" / "base", copy)
    (copy / "manifest.json").write_text((copy / "manifest.json").read_text() + " ")  # another digest, same weights
    pointer = read_json(root / "pointer.json")
    (root / "pointer.json").write_text(json.dumps({**pointer, "checkpoint": "revisions/copy", "revision":
                                                   hashlib.sha256((copy / "manifest.json").read_bytes()).hexdigest()}))
    assert main(["generate", str(root), "--tokens", "4"]) == 5
    assert "pointer.json names revision" in capsys.readouterr().err


@pytest.mark.slow  # a coordinator and its contributor processes, ~15 s
def test_sigterm_to_window_run_stops_its_contributors_and_says_how_to_close(base: Path, tmp_path: Path) -> None:
    """SIGTERM ended the coordinator alone (exit 143, no word): its contributors trained on and submitted into an
    open window no one was closing."""
    root = new_program(base, tmp_path / "term", contributors=2)
    coordinator = subprocess.Popen([sys.executable, "-m", "lit_psion", "window", "run", str(root)],
                                   env=subprocess_env(OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)  # fmt: skip
    logs = root / "windows" / "w-0001" / "logs"
    deadline = time.monotonic() + 120
    while not (logs.is_dir() and len(list(logs.iterdir())) == 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the contributors are started (not yet done: their training takes seconds)
    coordinator.send_signal(signal.SIGTERM)
    _, err = coordinator.communicate(timeout=60)
    assert coordinator.returncode == 143, err
    assert "window run stopped by SIGTERM while w-0001 trained: its contributors were stopped" in err
    left = subprocess.run(["pgrep", "-f", f"window contribute {root}"], capture_output=True, text=True).stdout
    assert not left.strip(), left
    assert main(["window", "close", str(root), "w-0001"]) == 0


def test_an_accepted_contribution_changed_after_scoring_names_the_way_forward(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`window close` refused it every time ("changed after it was scored; nothing was aggregated") and `window run`
    said to close the window first: a circle, with no word of what to do."""
    from lit_psion.windows.validate import score, seal

    root = new_program(base, tmp_path / "changed", contributors=1)
    plan = plan_window(root)
    open_window(root, plan.window_id)
    contribute(root, plan.window_id, plan.assignments[0].assignment_id)
    seal(root, plan.window_id)
    score(root, plan.window_id)
    adapter = Program(root).window_dir(plan.window_id) / "contributions" / "a00" / "adapter.safetensors"
    sealed = adapter.read_bytes()
    adapter.write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    capsys.readouterr()
    assert main(["window", "close", str(root), plan.window_id]) == 4
    assert "put back the bytes that were sealed (the contributor's copy of contributions/a00, or a backup), then " \
        "window close again" in capsys.readouterr().err
    adapter.write_bytes(sealed)
    assert main(["window", "close", str(root), plan.window_id]) == 0


def test_a_base_that_is_another_programs_revision_is_held_to_that_programs_split(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--base PROGRAM/revisions/base` skipped the split check (no run beside it): a val_fraction of 0.3 held out
    text the first program's windows trained on."""
    first = new_program(base, tmp_path / "first")
    settings = write_settings(tmp_path / "other.yaml", data={**SETTINGS["data"], "val_fraction": 0.3})
    capsys.readouterr()
    assert main(["window", "init", str(tmp_path / "second"), "--config", str(settings), "--base",
                 str(first / "revisions" / "base")]) == 2  # fmt: skip
    assert f"the base is a revision of the window program {str(first)!r}, which trained on this data with another " \
        "split" in capsys.readouterr().err
    same = write_settings(tmp_path / "same.yaml")
    assert main(["window", "init", str(tmp_path / "third"), "--config", str(same), "--base",
                 str(first / "revisions" / "base")]) == 0  # fmt: skip
