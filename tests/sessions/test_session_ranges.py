"""A session setting out of its range is exit 2 before anything is made; a forged record or state that passed verify
and then crashed a run (exit 1) is refused by both alike."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lit_psion.cli import main
from lit_psion.core import read_json
from tests.helpers import TINY
from tests.sessions.helpers import meta_edit, rerecorded_optimizer, rerecorded_state, session

HUGE = "99999999999999999999999"
OUT_OF_RANGE = [  # (the command and its flags past the root, what the line names); each was exit 1 or accepted
    (["run", "--session_id", "s1", "--steps", "32", "--seed=-1"], "--seed"),
    (["run", "--session_id", "s1", "--steps", "32", "--seed", str(2**32)], "--seed"),
    (["init-base", "--seed=-5"], "--seed"),  # it left an empty base/ too
    (["init-base", "--seed", HUGE], "--seed"),
    (["init-base", "--env_seed", HUGE], "--env_seed"),
    (["init-base", "--n_state", "100000000"], "100000000"),
    (["init-base", "--u_dim", "1025"], "1025"),
    (["init-base", "--ns_steps", "100"], "--ns_steps"),
    (["init-base", "--pretrain_steps", "1000001"], "--pretrain_steps"),
    (["init-base", "--pretrain_steps", "100000", "--pretrain_batch", "100000"], "--pretrain_batch 100000"),
    (["init-base", "--pretrain_seq", "100000000"], "--pretrain_seq 100000000"),
]


@pytest.mark.parametrize(("argv", "names"), OUT_OF_RANGE, ids=[" ".join(argv[:1] + argv[-2:]) for argv, _ in
                                                               OUT_OF_RANGE])  # fmt: skip
def test_a_seed_or_size_out_of_range_is_exit_2_and_makes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 argv: list[str], names: str) -> None:  # fmt: skip
    root = tmp_path / "artifacts"
    assert session(argv[0], "--artifacts_root", str(root), *argv[1:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and names in err[0], err
    assert not root.exists()


@pytest.mark.parametrize(("flags", "says"), [(["--ns_steps", "1000"], "--ns_steps"), (["--ns_steps", "0"], "[1, 99]"),
                                             (["--chunk", "100000000"], "--chunk must be at most 10,000,000"),
                                             (["--chunk", "8", "--buffer_len", "8200"], "--buffer_len must be at most "
                                              "1024 chunks of --chunk 8 (8,192 steps), got 8200")],
                         ids=["ns_steps 1000", "ns_steps 0", "chunk past a run", "buffer past its chunks"])  # fmt: skip
def test_new_refuses_a_setting_no_run_could_take(trained: Path, capsys: pytest.CaptureFixture, flags: list[str],
                                                 says: str) -> None:  # fmt: skip
    """--ns_steps 1000 made a session every run of which failed in torch's Muon (exit 1); --chunk 100000000 one every
    run of which was refused (more steps than a run takes)."""
    assert session("new", "--artifacts_root", str(trained), "--session_id", "n1", *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (trained / "sessions" / "n1").exists()


def test_a_run_too_long_to_hold_for_the_base_is_exit_2(trained: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from lit_psion.sessions import commands

    monkeypatch.setattr(commands, "MAX_VALUES", 100)
    runs = sorted((trained / "sessions" / "s1" / "runs").iterdir())
    assert session("run", "--artifacts_root", str(trained), "--session_id", "s1", "--steps", "32") == 2
    assert "numbers in memory, more than 100" in capsys.readouterr().err
    assert sorted((trained / "sessions" / "s1" / "runs").iterdir()) == runs


def _momentum(state: dict[str, Any], key: int, tensor: torch.Tensor) -> dict[str, Any]:
    return {**state, "state": {**state["state"], key: {"momentum_buffer": tensor}}}


def _group(state: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**state, "param_groups": [{**state["param_groups"][0], **changes}]}


FORGED = [  # (case, what is done, exit code of run and verify, what the line says)
    ("ns_steps 1000 in meta.json", meta_edit(lambda m: m["settings"].update(ns_steps=1000)), 5, "[1, 99]"),
    ("parent id a list", meta_edit(lambda m: m.update(parent_session_id=["x"])), 5,
     "parent_session_id is ['x'], not a session id or null"),
    ("root id a number", meta_edit(lambda m: m.update(root_session_id=3)), 5, "root_session_id is 3"),
    ("an optimizer state without settings", rerecorded_optimizer(lambda s: {
        "state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"params": [0, 1]}]}), 4,
     "param_groups[0] without 'adjust_lr_fn'"),  # it was KeyError 'lr' mid-run
    ("a momentum of another shape", rerecorded_optimizer(lambda s: _momentum(s, 0, torch.zeros(3))), 4,
     "state[0].momentum_buffer of shape (3,)"),
    ("a state for no parameter", rerecorded_optimizer(lambda s: _momentum(s, 7, torch.zeros(3))), 4,
     "parameter 7, which no param group names"),
    ("one parameter too few", rerecorded_optimizer(lambda s: _group(s, params=[0])), 4, "params [0], not 2"),
    ("ns_steps 1000 in the optimizer", rerecorded_optimizer(lambda s: _group(s, ns_steps=1000)), 4,
     "param_groups[0].ns_steps 1000"),
    ("two param groups", rerecorded_optimizer(lambda s: {**s, "param_groups": s["param_groups"] * 2}), 4,
     "param_groups of 2 entries"),
    ("a list for an optimizer", rerecorded_optimizer(lambda s: [s]), 4, "not an optimizer state"),
    ("a gate window of no rows", rerecorded_state(lambda s: {**s, "gate.window": torch.zeros(3)}), 4,
     "gate.window of shape (3,), not (chunks, 2)"),  # it was TypeError 'float' object is not iterable
    ("a tensor the model has not", rerecorded_state(lambda s: {**s, "junk": torch.zeros(2)}), 4, "holds junk, which"),
    ("a served tensor of another shape", rerecorded_state(lambda s: {**s, "served.P_B": torch.zeros(1)}), 4,
     "served.P_B of shape (1,)"),
    ("a whole-number state", rerecorded_state(lambda s: {**s, "P_A": s["P_A"].long()}), 4, "of dtype int64"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "harm", "code", "says"), FORGED, ids=[c[0] for c in FORGED])
def test_verify_refuses_what_a_run_would_and_the_run_leaves_nothing(trained: Path, capsys: pytest.CaptureFixture,
                                                                    case: str, harm: Any, code: int,
                                                                    says: str) -> None:  # fmt: skip
    """Each passed verify; the run then failed mid-fit (exit 1) and left a run directory meta.json never recorded."""
    harm(trained)
    directory = trained / "sessions" / "s1"
    before = sorted(p.relative_to(directory) for p in directory.rglob("*"))
    root = ("--artifacts_root", str(trained), "--session_id", "s1")
    capsys.readouterr()
    assert session("verify", *root) == code
    captured = capsys.readouterr()
    assert says in captured.out + captured.err, captured.out
    assert session("run", *root, "--steps", "32") == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert sorted(p.relative_to(directory) for p in directory.rglob("*")) == before


def test_list_names_a_session_whose_lineage_is_of_the_wrong_kind(trained: Path, capsys: pytest.CaptureFixture) -> None:
    """A parent_session_id of ["x"] was exit 1 in list (a TypeError formatting the row)."""
    meta_edit(lambda m: m.update(parent_session_id=["x"]))(trained)
    capsys.readouterr()
    assert session("list", "--artifacts_root", str(trained)) == 5
    err = capsys.readouterr().err
    assert "session 's1' is not listed" in err and "parent_session_id is ['x']" in err


def test_a_session_without_limits_keeps_meta_json_strict_json(trained: Path) -> None:
    """--state_norm_max 1e400 (infinite) wrote `Infinity` into meta.json, which strict JSON readers refuse; no limit
    is null there, and reads back as the same policy."""
    from lit_psion.sessions.commands import _policy

    root = ("--artifacts_root", str(trained), "--session_id", "free")
    assert session("new", *root, "--rollback_tol", "inf", "--grad_norm_max", "inf", "--state_norm_max", "1e400") == 0
    text = (trained / "sessions" / "free" / "meta.json").read_text()
    settings = json.loads(text, parse_constant=lambda word: pytest.fail(f"meta.json holds {word}"))["settings"]
    assert settings["rollback_tol"] is settings["grad_norm_max"] is settings["state_norm_max"] is None
    policy = _policy(settings)
    assert (policy.rollback_tol, policy.grad_norm_max, policy.state_norm_max) == (math.inf, None, None)
    json.dumps(read_json(trained / "sessions" / "free" / "meta.json"), allow_nan=False)
    assert session("verify", *root) == 0


def test_a_zero_limit_is_refused_naming_how_to_give_none(trained: Path, capsys: pytest.CaptureFixture,
                                                         tmp_path: Path) -> None:  # fmt: skip
    """It said "must be positive or null": null is the config's spelling, and a session command's is inf; then it
    said "inf on the command line", which a fit's command line reads as text (its spelling is null, or .inf)."""
    capsys.readouterr()
    assert session("new", "--artifacts_root", str(trained), "--session_id", "z", "--grad_norm_max", "0") == 2
    said = "grad_norm_max must be positive, or null for no limit (a session command's --grad_norm_max takes inf)"
    assert f"{said}, got 0" in capsys.readouterr().err
    fit = ["fit", "--config", TINY, "--trainer.strategy", "transactional", "--trainer.max_steps", "1",
           "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main([*fit, "--trainer.strategy.policy.grad_norm_max", "0"]) == 2
    assert f"{said}, got 0" in capsys.readouterr().err
    assert main([*fit, "--trainer.strategy.policy.grad_norm_max", "null"]) == 0  # following it works


@pytest.mark.parametrize("existing_root", [False, True], ids=["new root", "existing root"])
def test_an_interrupted_init_base_takes_back_what_it_made(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, existing_root: bool
) -> None:
    """Ctrl-C during init-base's pretraining left base/ holding only its .lock (and the root it had made)."""
    import lightning as L

    def interrupted(self: Any, *args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    root = tmp_path / "artifacts"
    if existing_root:
        root.mkdir()
    monkeypatch.setattr(L.Trainer, "fit", interrupted)
    assert session("init-base", "--artifacts_root", str(root), "--pretrain_steps", "3") == 130
    assert "lit_psion: interrupted" in capsys.readouterr().err
    assert (root.exists(), list(root.iterdir()) if root.exists() else []) == (existing_root, [])


ANSWERED_FROM_JSON = [  # (the command past the root, its exit code, its line): each took ~6 s to import torch first
    (["run", "--session_id", "s1", "--steps", "2"], 2, "--steps 2 is shorter than one chunk (32); use at least that"),
    (["run", "--session_id", "nope", "--steps", "64"], 2, "no session 'nope' in"),
    (["run", "--artifacts_root", "/nonexistent", "--session_id", "s1", "--steps", "64"], 2, "no base model in"),
]


@pytest.mark.parametrize(("args", "code", "says"), ANSWERED_FROM_JSON, ids=["short", "no session", "no base"])
def test_what_the_records_refuse_is_said_before_torch_is_imported(trained: Path, args: list[str], code: int,
                                                                   says: str) -> None:  # fmt: skip
    command = [sys.executable, "-X", "importtime", "-m", "lit_psion", "session", *args[:1], "--artifacts_root",
               str(trained), *args[1:]]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert not {"torch", "lightning"} & {line.split("|")[-1].strip() for line in lines if line.startswith("import ")}
    (line,) = [line for line in lines if not line.startswith("import time:")]
    assert says in line, line
