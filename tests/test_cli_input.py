"""What the command line does with input a careless user gives it: a setting a later --config overrides, an
accelerator Lightning cannot use, a home-relative path, no room for temporary files, a Ctrl-C mid-fit, YAML merge
keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.run import read_latest
from tests.helpers import TINY, fit, subprocess_env
from tests.test_bad_input import one_error_line
from tests.test_cli import _deliver_ctrl_c


@pytest.mark.parametrize("flag", ["--trainer.max_steps", "--model.init_args.optimizer.lr", "--model.optimizer.lr",
                                  "--seed_everything"])  # fmt: skip
def test_a_setting_a_later_config_file_sets_is_refused_not_dropped(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   flag: str) -> None:  # fmt: skip
    """`fit --trainer.max_steps 3 --config preset.yaml` trained the preset's 300 steps into the preset's root."""
    root = ("--trainer.default_root_dir", str(tmp_path))
    assert main(["fit", flag, "3", "--config", TINY, *root]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == (f"lit_psion: error: {flag} comes before --config {TINY!r}, which sets it too, so the file's "
                    "value would be used; give it after the --config files"), line
    assert not any(tmp_path.iterdir())
    callbacks = tmp_path / "callbacks.json"  # a list a later file sets: what += added before it would be lost
    callbacks.write_text('{"trainer": {"callbacks": [{"class_path": "tests.helpers.LossSpikeEvidence"}]}}')
    assert main(["fit", "--config", TINY, "--trainer.callbacks+=tests.helpers.KillAfterSeal", "--config",
                 str(callbacks), *root]) == 2  # fmt: skip
    assert "--trainer.callbacks+=tests.helpers.KillAfterSeal comes before --config" in capsys.readouterr().err
    assert main(["fit", "--config", TINY, "--trainer.callbacks.init_args.state", "x", "--config", str(callbacks),
                 *root]) == 2  # a setting inside the list the later file replaces  # fmt: skip
    assert "--trainer.callbacks.init_args.state comes before --config" in capsys.readouterr().err
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("trainer:\n  log_every_n_steps: 2\n")  # sets something else: the order is harmless
    assert main(["fit", "--config", TINY, "--trainer.max_steps", "1", "--config", str(overlay), *root]) == 0


LIGHTNING_REFUSES = [("--trainer.accelerator", "tpu", "Requirement 'torch_xla"),
                     ("--trainer.devices", "many", "`devices` selected with `CPUAccelerator` should be an int > 0"),
                     pytest.param("--trainer.accelerator", "cuda", "`CUDAAccelerator` can not run on your system",
                                  marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA"))]


@pytest.mark.parametrize(("key", "value", "says"), LIGHTNING_REFUSES, ids=["tpu", "devices many", "cuda"])
def test_an_accelerator_or_devices_lightning_cannot_use_is_a_setting(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                    key: str, value: str, says: str) -> None:
    """Lightning raises ModuleNotFoundError, TypeError or ValueError for them while building the trainer: exit 1."""
    assert fit("--trainer.default_root_dir", str(tmp_path), key, value) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"lit_psion: error: trainer: {says}"), line
    assert ("use --trainer.accelerator cpu" in line) == (value == "cuda"), line  # the fix, where it is the fix
    assert not any(tmp_path.iterdir())


def test_a_home_relative_root_and_data_file_mean_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """`--trainer.default_root_dir '~/runs'` (or `~/runs` in YAML) made a directory named `~` in the working one,
    and printed a path that read as the home directory."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    (home / "notes.txt").write_text(Path("fixtures/tiny_corpus.txt").read_text())
    config = str(Path(TINY).resolve())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert fit("--trainer.default_root_dir", "~/runs", "--data.init_args.files", "~/notes.txt", "--trainer.max_steps",
               "1", config=config) == 0  # fmt: skip
    run_dir = home / "runs" / read_latest(home / "runs")
    assert f"resume with    --trainer.default_root_dir {home / 'runs'} --ckpt_path last" in capsys.readouterr().out
    assert not any(work.iterdir())
    assert read_json(run_dir / "data_manifest.json")["sources"][0]["path"] == str(home / "notes.txt")


def test_no_room_for_temporary_files_at_start_up_is_one_line(tmp_path: Path) -> None:
    """Importing torch needs a temporary file; where none can be written, a 60-line traceback and exit 1 came out,
    before lit_psion's own handling was in place."""
    import resource

    def no_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    done = subprocess.run([sys.executable, "-m", "lit_psion", "fit", "--config", TINY, "--trainer.default_root_dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, env=subprocess_env(),
                          preexec_fn=no_files)  # fmt: skip
    assert done.returncode == 6, done.stderr[-2000:]
    assert one_error_line(done.stderr).startswith("lit_psion: error: "), done.stderr[-2000:]  # (where it fails
    # depends on what the installed libraries write first: the temporary directory torch's import asks for here)


@pytest.mark.parametrize(("step", "says"), [
    (2, "; run {run} has no durable checkpoint yet, so there is nothing to continue: start again without --ckpt_path"),
    (5, "; continue run {run} from its latest durable checkpoint with --trainer.default_root_dir {root} "
        "--ckpt_path last"),
], ids=["before the first checkpoint", "after one"])  # fmt: skip
def test_a_ctrl_c_mid_fit_says_whether_there_is_anything_to_continue(tmp_path: Path, step: int, says: str) -> None:
    """Interrupted before its first checkpoint, the run was recorded paused and the line said only 'interrupted';
    `--ckpt_path last` then said there was no durable checkpoint."""
    import os

    def own_group_with_ctrl_c() -> None:
        os.setpgrp()  # the callback signals its process group: this fit's alone
        _deliver_ctrl_c()

    callbacks = tmp_path / "cb.json"
    callbacks.write_text(json.dumps({"trainer": {"callbacks": [
        {"class_path": "tests.helpers.InterruptAt", "init_args": {"step": step}}]}}))  # fmt: skip
    root = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "lit_psion", "fit", "--config", TINY, "--config", str(callbacks),
                           "--trainer.default_root_dir", str(root), "--checkpoint.every_n_train_steps", "3"],
                          capture_output=True, text=True, timeout=180, env=subprocess_env(),
                          preexec_fn=own_group_with_ctrl_c)  # fmt: skip
    assert done.returncode == 130, done.stderr[-2000:]
    run = read_latest(root)
    said = says.format(run=run, root=root)  # (the root named: a preset's own root is not this one)
    assert done.stderr.strip().splitlines()[-1] == "lit_psion: interrupted" + said, done.stderr[-2000:]
    assert "Detected KeyboardInterrupt" not in done.stderr and "\n\n" not in done.stderr, done.stderr[-2000:]


def test_a_config_with_yaml_anchors_and_merge_keys_is_taken(tmp_path: Path) -> None:
    """The duplicate-key check refused `<<: *anchor` (a merge key has no constructor of its own)."""
    merged = tmp_path / "merged.yaml"
    merged.write_text("trainer:\n  <<: &short {max_steps: 1, log_every_n_steps: 1}\n  default_root_dir: "
                      + str(tmp_path / "runs") + "\n")  # fmt: skip
    assert main(["fit", "--config", TINY, "--config", str(merged)]) == 0
    assert read_json(tmp_path / "runs" / read_latest(tmp_path / "runs") / "run.json")["global_step"] == 1


def test_weights_only_reads_true_and_false_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--print_config`` said ``weights_only: null`` and ``--weights_only false`` was silently made true: every
    load is safetensors or ``torch.load(weights_only=True)``. A recorded config's ``null`` still fits."""
    assert main(["fit", "--config", TINY, "--print_config"]) == 0
    assert "\nweights_only: true\n" in capsys.readouterr().out
    for subcommand in ("fit", "validate"):  # --help says so, not Lightning's advice to give false
        assert main([subcommand, "--help"]) == 0
        assert "always true" in capsys.readouterr().out.split("--weights_only", 2)[2].split("--", 1)[0]
        assert main([subcommand, "--config", TINY, "--weights_only", "false",
                     "--trainer.default_root_dir", str(tmp_path)]) == 2  # fmt: skip
        assert "weights_only false: lit_psion loads weights from safetensors" in one_error_line(capsys.readouterr().err)
    assert not any(tmp_path.iterdir())
    recorded = tmp_path / "recorded.yaml"
    recorded.write_text("weights_only: null\n")
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2", "--config", str(recorded)) == 0


def test_a_fit_refused_before_its_run_exists_takes_back_the_root_it_made(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """A refusal at the model's setup (after the root and the run's locked directory are made) left the root,
    and every directory above it the fit had made, behind empty."""
    refused = ("--model.init_args.decoder.vocab_size", "4096")
    root = tmp_path / "new" / "runs"
    assert fit("--trainer.default_root_dir", str(root), *refused) == 2
    assert "is not the data's" in one_error_line(capsys.readouterr().err)
    assert not any(tmp_path.iterdir()), "nothing the fit made is left"
    kept = tmp_path / "kept"
    (kept / "notes").mkdir(parents=True)  # a root the user made, holding something of theirs
    assert fit("--trainer.default_root_dir", str(kept / "runs"), *refused) == 2
    assert fit("--trainer.default_root_dir", str(kept), *refused) == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept", "notes"]


def test_a_root_too_long_for_the_path_limit_is_refused_before_training(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """A ~4000-byte root trained, then failed at its first checkpoint as a disk fault (exit 6, "free space")."""
    root = tmp_path.joinpath(*["d" * 250] * ((4096 - len(str(tmp_path))) // 251))
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "2") == 2
    assert "past this system's 4096-byte path limit; give a shorter path" in one_error_line(capsys.readouterr().err)
    assert not any(tmp_path.iterdir())


LOOPED = [  # (argv with LOOP for the link loop, the path the line names)
    (["doctor", "LOOP"], "LOOP"), (["receipts", "verify", "LOOP"], "LOOP"), (["ckpt", "verify", "LOOP"], "LOOP"),
    (["ckpt", "consolidate", "LOOP"], "LOOP"), (["generate", "LOOP", "--tokens", "1"], "LOOP"),
    (["adapter", "export", "LOOP"], "LOOP"), (["mesh", "status", "LOOP"], "LOOP"),
    (["compare", "fixtures", "--out", "LOOP/sub"], "LOOP/sub"),
    (["window", "init", "LOOP/x", "--config", "configs/window_lora.yaml", "--base", "fixtures"], "LOOP/x"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "named"), LOOPED, ids=[" ".join(a[:2]) for a, _ in LOOPED])
def test_a_symbolic_link_loop_is_named_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str],
                                                   named: str) -> None:  # fmt: skip
    """Path.resolve raises RuntimeError("Symlink loop from ...") on a loop: every command that resolved one was exit 1
    ("unexpected error")."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    loop = str(tmp_path / "a")
    capsys.readouterr()
    assert main([arg.replace("LOOP", loop) for arg in argv]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{named.replace('LOOP', loop)!r} is a symbolic link that leads back to itself" in line, line


@pytest.mark.parametrize(("args", "prog"), [(("receipts", "verify", ""), "receipts"), (("doctor", ""), "doctor"),
                                            (("compare", "x", "--out", ""), "compare"),
                                            (("session", "list", "--artifacts_root", ""), "session list"),
                                            (("adapter", "merge", "a", "--base", "b", "--out", ""), "adapter merge")],
                         ids=lambda a: " ".join(a[:2]) if isinstance(a, tuple) else None)  # fmt: skip
def test_an_empty_argument_is_named_not_read_as_the_current_directory(args: tuple[str, ...], prog: str,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """It was reported as '.' ("'.' is not a run directory"), or wrote there (compare's --out); it names the
    subcommand it was given to (adapter merge's was "python -m lit_psion adapter: ...")."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    flag = f"{args[-2]} was given an empty value" if args[-2].startswith("--") else "an empty argument ('') was given"
    assert flag in err and "'.'" not in err and "\n" not in err, err
    assert f"python -m lit_psion {prog}: " in err and f"(see python -m lit_psion {prog} --help)" in err, err


@pytest.mark.parametrize(("args", "says"), [
    (("plan", "root", "--contributors", "0"), "window plan: --contributors must be >= 1, got 0 (see python -m "
                                               "lit_psion window plan --help)"),
    (("run", "root", "--windows", "0"), "window run: --windows must be >= 1, got 0 (see python -m lit_psion window "
                                         "run --help)"),
])  # fmt: skip
def test_a_value_out_of_range_names_the_subcommand_it_was_given_to(args: tuple[str, ...], says: str,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """It said "python -m lit_psion window: ... (see python -m lit_psion window --help)", whose help has no flag."""
    assert main(["window", *args]) == 2
    assert f"python -m lit_psion {says}" in capsys.readouterr().err
