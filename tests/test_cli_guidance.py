"""What the command line says to a user who gave it the wrong thing: a preset missing, another preset's run, a
value argparse takes for a flag; and the console script dispatching as ``python -m lit_psion`` does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core.run import read_latest
from tests.helpers import REPO_ROOT, TINY, fit, subprocess_env


def test_the_console_script_dispatches_as_python_m_does() -> None:
    """``lit-psion --help`` ran LightningCLI (5 s, only fit/validate/test/predict listed): the script pointed at
    lit_psion.cli:main, not at the dispatcher ``python -m lit_psion`` runs."""
    import tomllib

    target = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]["lit-psion"]
    module, function = target.split(":")
    script = (f"import sys; sys.argv = ['lit-psion', '--help']; from {module} import {function}; code = {function}(); "
              "print(code, 'lightning' in sys.modules)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "0 False" and "session" in result.stdout, result


def test_another_presets_run_is_named_as_such_not_given_flags_that_cannot_help(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A config of other files and other settings resuming a run was told to give the run's settings (the
    --data.block_size ... flags), which still failed: the files and the tokenizer differ too."""
    root = ("--trainer.default_root_dir", str(tmp_path / "runs"))
    assert fit(*root, "--trainer.max_steps", "3") == 0
    other = tmp_path / "other.txt"
    other.write_text("\n\n".join(f"Paragraph {i}: " + "other words here. " * 40 for i in range(30)))
    run = tmp_path / "runs" / read_latest(tmp_path / "runs")
    capsys.readouterr()
    assert fit(*root, "--trainer.max_steps", "6", "--ckpt_path", "last", "--data.files", str(other),
               "--data.block_size", "16") == 3  # fmt: skip
    said = capsys.readouterr().err
    assert "the run trained on other text ('fixtures/tiny_corpus.txt'): continue it with --config " \
        f"{run / 'config.yaml'}, or start a new run without --ckpt_path" in said, said
    assert "give the settings it was trained with" not in said


def _two_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in "ab":
        (folder / f"{name}.txt").write_text("\n\n".join(f"{name} {i}: " + "some words here. " * 30 for i in range(12)))


CHANGED_IN_PLACE = [  # the run's files, changed where they are: (which files, resumed with): the hint
    ("every file", "its own config", "the run trained on other text ('{data}/a.txt' and more): restore that text as it "
                                     "was, or start a new run without --ckpt_path"),
    ("every file", "the preset and its files", "the run trained on other text ('{data}/a.txt' and more): restore that "
                                               "text as it was, or start a new run without --ckpt_path"),
    ("one file", "its own config", "restore the original data and settings or start a new run without --ckpt_path"),
]


@pytest.mark.parametrize(("changed", "given", "hint"), CHANGED_IN_PLACE)
def test_a_run_whose_files_changed_in_place_is_not_told_to_pass_the_config_that_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture, changed: str, given: str, hint: str
) -> None:  # fmt: skip
    """The run's own config names the very files that changed: "continue it with --config RUN/config.yaml" (or
    "or pass that run's own config") was said also to someone who had passed it, and could not help anyone."""
    data, root = tmp_path / "data", ("--trainer.default_root_dir", str(tmp_path / "runs"))
    _two_files(data)
    files = ("--data.files", str(data / "*.txt"))
    assert fit(*root, *files, "--trainer.max_steps", "3") == 0
    run = tmp_path / "runs" / read_latest(tmp_path / "runs")
    for name in "ab" if changed == "every file" else "b":
        (data / f"{name}.txt").write_text((data / f"{name}.txt").read_text().replace("words", "other words"))
    capsys.readouterr()
    config = ("--config", str(run / "config.yaml")) if given == "its own config" else files
    assert fit(*config, *root, "--trainer.max_steps", "6", "--ckpt_path", "last") == 3
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith(hint.format(data=data)) and "config.yaml" not in line, line


@pytest.mark.parametrize("args", [("--config", "configs/overlays/transactional.yaml"), ("--trainer.max_steps", "3")])
def test_an_overlay_or_flags_without_a_preset_say_to_give_one_first(args: tuple[str, ...],
                                                                    capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Said "the following arguments are required: fit.data, fit.model", and not what to give."""

    capsys.readouterr()
    assert main(["fit", *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "lit_psion: error: no data and no model configured; give a preset first (--config configs/decoder_tiny.yaml), "
        "then any overlay (--config configs/overlays/...) and flags"]


@pytest.mark.parametrize("group", ["data", "model"])
def test_a_class_setting_without_a_preset_says_to_give_one_first(group: str, capsys: pytest.CaptureFixture) -> None:
    """`fit --data.files x` said "LightningDataModule refuses the settings given for it: Option 'files' is not
    accepted", as if the setting were misspelt, not that no preset named a class to take it."""

    capsys.readouterr()
    setting = {"data": "--data.files", "model": "--model.decoder.n_layer"}[group]
    assert main(["fit", setting, "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"lit_psion: error: {group}: no {group} class configured for these settings; give a preset first (--config "
        "configs/decoder_tiny.yaml), then any overlay (--config configs/overlays/...) and flags"]


@pytest.mark.parametrize("overlay", ["fsdp.yaml", "fsdp_transactional.yaml", "deepspeed_zero2.yaml"])
def test_an_overlay_given_before_its_preset_says_to_give_the_preset_first(overlay: str, capsys: pytest.CaptureFixture
                                                                          ) -> None:  # fmt: skip
    """An overlay that sets model settings before the preset named the model said "LightningModule refuses the
    settings given for it: Option 'optimizer.name' is not accepted", and pointed at `--model.help
    lightning.LightningModule`, which lists nothing."""
    capsys.readouterr()
    assert main(["fit", "--config", f"configs/overlays/{overlay}", "--config", "configs/decoder_tiny.yaml"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == ("lit_psion: error: model: no model class configured for these settings when they were read; give "
                    "a preset first (--config configs/decoder_tiny.yaml), then any overlay (--config "
                    "configs/overlays/...) and flags"), line


def test_a_negative_value_a_command_takes_for_a_flag_says_how_to_give_it(capsys: pytest.CaptureFixture) -> None:
    """`window run ROOT --deadline -inf` said "expected one argument", as argparse does, and not how to give it."""

    capsys.readouterr()
    assert main(["window", "run", "somewhere", "--deadline", "-inf"]) == 2
    assert capsys.readouterr().err.strip() == (
        "lit_psion: error: python -m lit_psion window run: argument --deadline: expected one argument, written as "
        "--FLAG=VALUE when the value starts with '-' (such as --deadline=-1) (see python -m lit_psion window run "
        "--help)")  # fmt: skip


def test_a_value_read_as_a_flag_is_shown_with_the_flag_it_was_given_to(capsys: pytest.CaptureFixture) -> None:
    """`generate RUN --prompt --tokens 3` was told "(such as --deadline=-1)", a flag of another command."""
    capsys.readouterr()
    assert main(["generate", "somewhere", "--prompt", "--tokens", "3"]) == 2
    assert "(such as --prompt=-1) (see python -m lit_psion generate --help)" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "says"), [
    (["receipts", "check", "somewhere"], "python -m lit_psion receipts: argument action: invalid choice: 'check' "
                                         "(choose from 'verify') (see python -m lit_psion receipts --help)"),
    (["ckpt", "verify", "somewhere", "--out"], "python -m lit_psion ckpt: argument --out: expected one argument"),
    (["fit", "--confg", "configs/decoder_tiny.yaml"], "unrecognized arguments: --confg configs/decoder_tiny.yaml; did "
                                                      "you mean --config?"),
    (["validate", "--ckpt_pth", "last"], "unrecognized arguments: --ckpt_pth last; did you mean --ckpt_path?"),
    (["fit", "--config", "configs/decoder_tiny.yaml", "--dat.batch_size", "2"], "unrecognized arguments: "
     "--dat.batch_size 2; did you mean --data.batch_size?"),  # a group's name mistyped had no suggestion
])  # fmt: skip
def test_a_misspelt_command_word_or_flag_is_one_line_naming_the_fix(
    argv: list[str], says: str, capsys: pytest.CaptureFixture
) -> None:
    """`receipts check` was argparse's bare "argument action: invalid choice", without the command or its --help that
    every other complaint names; `--confg` had no suggestion, though `--trainer.max_stepz` had one."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


@pytest.mark.parametrize("command", ["fit", "session init-base"])
def test_a_fit_prints_no_lightning_chatter_a_user_cannot_act_on(tmp_path: Path, command: str) -> None:
    """Every fit printed Lightning's advertisement for its cloud logger ("Tip: ... litlogger") and torch's
    FutureWarning about ``LeafSpec`` from inside Lightning's ``_pytree``, ahead of lit_psion's own lines; a
    session's Trainer still did."""
    args = (["fit", "--config", TINY, "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path),
             "--seed_everything", "3"] if command == "fit" else
            ["session", "init-base", "--artifacts_root", str(tmp_path), "--pretrain_steps", "4", "--pretrain_batch",
             "4", "--pretrain_seq", "8"])  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "lit_psion", *args], capture_output=True, text=True, timeout=300,
                            env=subprocess_env(), cwd=REPO_ROOT)  # fmt: skip
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed
    assert "step 1/1" in printed or command != "fit"  # the fit's own lines still print
    for chatter in ("Tip:", "litlogger", "LeafSpec", "Seed set to"):
        assert chatter not in printed, printed
    if command != "fit":  # its own Trainer's banner and step count ("max_steps=19 reached" of 600 steps asked for)
        assert "GPU available" not in printed and "`Trainer.fit` stopped" not in printed, printed


def test_an_argument_that_is_not_utf8_is_named_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A file name in another encoding reached the parser as surrogates: 'Parser key "data": 'utf-8' codec can't
    encode character ...'."""
    name = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.txt")
    assert main(["fit", "--config", TINY, "--data.files", name]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lit_psion: error: argument {os.fsencode(name)!r} is not UTF-8 text (the bytes of a name in another "
        "encoding); rename the file, or give the value in UTF-8")


def test_the_resume_line_of_a_root_with_a_space_or_a_quote_pastes_back(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The fit's summary said `resume with --trainer.default_root_dir /tmp/my runs --ckpt_path last`: pasted, the
    root split in two. And the session's 'no base model' line named its root the same way."""
    import shlex

    root = tmp_path / "it's my runs"
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "1") == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "resume with" in line)
    assert shlex.split(line.split("resume with", 1)[1]) == ["--trainer.default_root_dir", str(root), "--ckpt_path",
                                                            "last"]  # fmt: skip
    artifacts = tmp_path / "my artifacts"
    assert main(["session", "new", "--artifacts_root", str(artifacts), "--session_id", "s1"]) == 2
    told = capsys.readouterr().err.split("run `", 1)[1].split("`", 1)[0]
    assert shlex.split(told)[-2:] == ["--artifacts_root", str(artifacts)], told


def test_a_ctrl_c_after_a_command_has_said_its_verdict_does_not_undo_it(tmp_path: Path) -> None:
    """A Ctrl-C in the second the interpreter takes to exit after `session run` had committed and printed its
    metrics gave exit 130 and no line: the committed session read as interrupted."""
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "1") == 0
    run = tmp_path / read_latest(tmp_path)
    script = ("import os, signal, sys\nfrom lit_psion.__main__ import _entry\n"
              f"code = _entry(['receipts', 'verify', {str(run)!r}])\n"
              "os.kill(os.getpid(), signal.SIGINT)  # as in the teardown\nsys.exit(code)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=subprocess_env(), cwd=REPO_ROOT)  # fmt: skip
    assert done.returncode == 0 and "ok" in done.stdout and "KeyboardInterrupt" not in done.stderr, done


@pytest.mark.parametrize("flag", [("--model.help", "lit_psion.models.DecoderLM"),
                                  ("--data.help", "lit_psion.datamodules.dynamics.DynamicsDataModule")])  # fmt: skip
def test_a_class_help_names_the_command_as_it_is_run(flag: tuple[str, str], capsys: pytest.CaptureFixture) -> None:
    """Its usage line said ``usage: __main__.py [--model.decoder ...]``, a file the user never ran."""
    assert main(["fit", *flag]) == 0
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage.startswith("usage: python -m lit_psion [--"), usage


@pytest.mark.parametrize("flag", ["--model.init_args.decoder.n_layer", "--data.init_args.block_size"])
def test_a_last_flag_given_no_value_is_named_not_its_group(flag: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Last on the line, it was "--model was given no value" (the group argparse reports); with a flag after it,
    it was named already."""
    assert main(["fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path), flag]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion:")]
    assert lines == [f"lit_psion: error: {flag} was given no value; give it one, written as --FLAG=VALUE when the "
                     "value starts with '-' (such as --model.optimizer.lr=-1e-3)"], lines  # fmt: skip


@pytest.mark.parametrize(("argv", "says"), [
    (["session", "new", "--session_id", "s", "--muu", "0.1"],
     "python -m lit_psion session new: unrecognized arguments: --muu 0.1; did you mean --mu? (see python -m lit_psion "
     "session new --help)"),
    (["session", "list", "--artifacts_roots", "x"], "python -m lit_psion session list: unrecognized arguments: "
     "--artifacts_roots x; did you mean --artifacts_root? (see python -m lit_psion session list --help)"),
    (["ckpt", "verify", "x", "--bogus"], "python -m lit_psion ckpt: unrecognized arguments: --bogus (see python -m "
     "lit_psion ckpt --help)"),
    (["session", "new", "--session-id", "s"], "python -m lit_psion session new: the following arguments are required: "
     "--session_id; --session-id was given, did you mean --session_id? (see python -m lit_psion session new --help)"),
])  # fmt: skip
def test_an_unknown_flag_is_named_by_the_subcommand_it_was_given_to(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``session new --muu 0.1`` said "see python -m lit_psion session --help", whose help lists no --mu."""
    assert main([*argv[:2], "--artifacts_root", str(tmp_path), *argv[2:]] if argv[0] == "session" else argv) == 2
    assert f"lit_psion: error: {says}" in capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(("argv", "flag"), [(["doctor", "somewhere", "--tok"], "--tok"),
                                            (["window", "plan", "somewhere", "--contrib", "2"], "--contrib"),
                                            (["generate", "somewhere", "--prom", "x"], "--prom")])  # fmt: skip
def test_a_shortened_flag_is_not_read_as_the_flag_it_begins(argv: list[str], flag: str,
                                                            capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """argparse took `doctor RUN --tok` as --tokens (and `--contrib` as --contributors): a flag added later that
    shares the start would change what an old command line means."""
    capsys.readouterr()
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"unrecognized arguments: {flag}" in line, line


@pytest.mark.parametrize(("interval", "said"), [(5, " (validated at step 5)"), (4, "")])
def test_the_summary_says_when_its_scores_were_measured(tmp_path: Path, capsys: pytest.CaptureFixture, interval: int,
                                                       said: str) -> None:  # fmt: skip
    """`completed at step 8 val/loss=4.1237` showed step 5's validation as the final model's score."""
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "8",
               "--trainer.val_check_interval", str(interval)) == 0  # fmt: skip
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("run "))
    assert " completed at step 8 val/loss=" in line and line.endswith(said) and line.count("validated") == bool(said)
