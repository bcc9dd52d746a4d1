"""The command line: run directory contents, `--ckpt_path last`, and one-line errors with exit codes."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lit_psion.cli import main
from lit_psion.core import read_json, sha256_file
from lit_psion.core.run import read_latest
from tests.helpers import REPO_ROOT, TINY, fit, subprocess_env
from tests.test_bad_input import one_error_line


def test_fit_writes_the_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sample = ("--trainer.callbacks+=lit_psion.callbacks.GenerateSample", "--trainer.callbacks.max_new_tokens", "20")
    assert fit("--trainer.default_root_dir", str(tmp_path), *sample) == 0
    run_dir = tmp_path / read_latest(tmp_path)
    run = read_json(run_dir / "run.json")
    assert run["status"] == "completed" and run["run_id"] == run_dir.name and run["global_step"] == 12
    assert run["config_digest"] == sha256_file(run_dir / "config.yaml")
    assert run["data_manifest_digest"] == read_json(run_dir / "data_manifest.json")["digest"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["max_steps"] == 12 and config["model"]["init_args"]["decoder"]["d_model"] == 32
    pointer = read_json(run_dir / "checkpoints" / "pointer.json")
    checkpoint = run_dir / "checkpoints" / pointer["checkpoint"]
    assert pointer["step"] == 12 and pointer["manifest_sha256"] == sha256_file(checkpoint / "manifest.json")
    assert sorted(p.name for p in checkpoint.iterdir()) == ["manifest.json", "model.safetensors", "trainer_state.pt"]
    assert len(list((run_dir / "checkpoints").glob("step-*"))) == 3  # keep_last_k
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert any(row["val/loss"] for row in rows) and any(row["train/loss"] for row in rows)
    out = capsys.readouterr().out
    assert "sample" in out and str(run_dir) in out and "--ckpt_path last" in out


def test_turning_the_progress_bar_off_is_honoured(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2", "--trainer.enable_progress_bar")
    assert fit(*args, "false") == 0  # was a MisconfigurationException: our bar clashed with the flag
    assert "Epoch 0" not in capsys.readouterr().out


def test_resume_continues_the_same_run_and_its_metrics(tmp_path: Path) -> None:
    root = ("--trainer.default_root_dir", str(tmp_path))
    assert fit(*root, "--trainer.max_steps", "6") == 0
    run_id = read_latest(tmp_path)
    assert fit(*root, "--trainer.max_steps", "9", "--ckpt_path", "last") == 0
    assert read_latest(tmp_path) == run_id and len(list(tmp_path.glob("*/run.json"))) == 1
    run = read_json(tmp_path / run_id / "run.json")
    assert run["global_step"] == 9 and run["attempts"] == 2 and run["status"] == "completed"
    steps = [int(row["step"]) for row in csv.DictReader((tmp_path / run_id / "metrics.csv").open())]
    assert min(steps) == 0 and max(steps) >= 8, "metrics.csv must keep the first attempt's rows"


def test_corrupt_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3") == 0
    checkpoint = next((tmp_path / read_latest(tmp_path) / "checkpoints").glob("step-*")) / "model.safetensors"
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    assert fit("--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last") == 4
    assert "model.safetensors' is corrupt: expected sha256" in capsys.readouterr().err


def _a_file(tmp_path: Path, text: str, name: str = "extra.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _a_root(tmp_path: Path) -> str:
    (tmp_path / "old" / "r1").mkdir(parents=True, exist_ok=True)
    (tmp_path / "old" / "latest_run.json").write_text('{"run_id": "r1"}')
    return str(tmp_path / "old")


def _a_run(tmp_path: Path, inside: str = "") -> str:
    (tmp_path / "old" / "r1" / inside).mkdir(parents=True)
    (tmp_path / "old" / "r1" / "run.json").write_text("{}")
    return str(tmp_path / "old" / "r1" / inside).removesuffix("/")


ERRORS = [
    ("unknown key", lambda p: ["--trainer.max_stepz", "3"], 2,
     "unrecognized arguments: --trainer.max_stepz 3; did you mean trainer.max_steps?"),
    ("unknown key in a config file", lambda p: ["--config", _a_file(p, "trainer:\n  max_stepz: 3\n")], 2,
     "does not accept option 'trainer.max_stepz'; did you mean trainer.max_steps?"),
    ("a config that is not there", lambda p: ["--config", str(p / "nope.yaml")], 2,
     "nope.yaml': no such file; give a YAML config such as configs/decoder_tiny.yaml"),
    ("a config that is a directory", lambda p: ["--config", str(p)], 2, "': not a file; give a YAML config"),
    ("bad value", lambda p: ["--trainer.max_steps", "many"], 2, "trainer.max_steps: 'many' is not an int; give one"),
    ("invalid model", lambda p: ["--model.init_args.decoder.n_head", "3"], 2, "n_head must divide d_model"),
    ("missing data file", lambda p: ["--data.files", "nowhere.txt"], 3, "data file not found: 'nowhere.txt'"),
    ("empty corpus", lambda p: ["--data.files", _a_file(p, "", "empty.txt")], 3, "corpus is empty"),
    ("block larger than corpus", lambda p: ["--data.block_size", "20000"], 3, "block_size 20000 needs at least"),
    ("nothing to resume", lambda p: ["--ckpt_path", "last"], 4, "no run to continue"),
    ("lightning's optimizer group", lambda p: ["--optimizer", "torch.optim.SGD"], 2, "--optimizer is not used"),
    ("lightning's scheduler group", lambda p: ["--lr_scheduler.class_path", "torch.optim.lr_scheduler.StepLR"], 2,
     "--lr_scheduler.class_path is not used"),
    ("zero log interval", lambda p: ["--trainer.log_every_n_steps", "0"], 2, "log_every_n_steps must be >= 1"),
    ("negative bar refresh", lambda p: ["--progress_bar.refresh_rate", "-1"], 2, "refresh_rate must be an integer"),
    ("zero print interval", lambda p: ["--progress_bar.print_every", "0"], 2, "print_every must be >= 1 or null"),
    ("zero validation interval", lambda p: ["--trainer.val_check_interval", "0"], 2, "val_check_interval must be > 0"),
    ("nan validation interval", lambda p: ["--trainer.val_check_interval", "nan"], 2,
     "val_check_interval must be > 0 (steps, or a fraction of an epoch), got 'nan'"),  # said "Invalid time format"
    ("negative validation batches", lambda p: ["--trainer.limit_val_batches", "-1"], 2,
     "trainer.limit_val_batches must be a count >= 0 (0: none) or a fraction in [0.0, 1.0], got -1"),
    ("a fraction of test batches above 1", lambda p: ["--trainer.limit_test_batches", "1.5"], 2,
     "trainer.limit_test_batches must be a count >= 0"),
    ("sanity steps below -1", lambda p: ["--trainer.num_sanity_val_steps", "-2"], 2,
     "num_sanity_val_steps must be >= 0 (or -1: every validation batch), got -2"),  # was accepted, ran none
    ("zero accumulation", lambda p: ["--trainer.accumulate_grad_batches", "0"], 2, "accumulate_grad_batches must be"),
    ("zero steps", lambda p: ["--trainer.max_steps", "0"], 2, "max_steps must be >= 1"),
    ("endless steps", lambda p: ["--trainer.max_steps", "-1"], 2, "never ends"),
    ("negative seed", lambda p: ["--seed_everything", "-5"], 2, "seed_everything must be in"),
    ("unavailable accelerator", lambda p: ["--trainer.accelerator", "gpu"], 2,  # named no fix (a CPU-only host)
     "trainer: No supported gpu backend found!; this machine has no such accelerator: use --trainer.accelerator cpu"),
    ("negative workers", lambda p: ["--data.num_workers", "-1"], 2, "num_workers"),
    ("tiny BPE vocabulary", lambda p: ["--data.tokenizer", "bpe", "--data.vocab_size", "10"], 2, "vocab_size must be"),
    ("a file as the runs root", lambda p: ["--trainer.default_root_dir", TINY], 2, "is a file"),
    ("an uncreatable runs root", lambda p: ["--trainer.default_root_dir", "/proc/nope"], 2, "cannot be created"),
    ("a checkpoint that is a file", lambda p: ["--ckpt_path", TINY], 2, "not a lit_psion checkpoint directory"),
    ("lightning's checkpoint word", lambda p: ["--ckpt_path", "best"], 2, "a Lightning checkpoint name lit_psion"),
    ("a checkpoint that is not there", lambda p: ["--ckpt_path", str(p / "runs/r/checkpoints/step-000004")], 4,
     "step-000004': no such checkpoint; give a <run>/checkpoints/step-NNNNNN directory"),
    ("a run directory as the checkpoint", lambda p: ["--ckpt_path", _a_run(p)], 2,
     "is a run directory, not one of its checkpoints; give one of its checkpoints/step-NNNNNN"),
    ("a run's checkpoints directory as the checkpoint", lambda p: ["--ckpt_path", _a_run(p, "checkpoints")], 2,
     "is a run's checkpoints directory, not one of its checkpoints; give one of its checkpoints/step-NNNNNN"),
    ("a runs root as the checkpoint", lambda p: ["--ckpt_path", _a_root(p)], 2,
     "is a runs root, not a checkpoint; give --trainer.default_root_dir "),
    ("bad sampling, refused before training",
     lambda p: ["--trainer.callbacks+=lit_psion.callbacks.GenerateSample", "--trainer.callbacks.top_k", "0"], 2,
     "top_k must be >= 1"),
    ("unresolvable interpolation", lambda p: ["--model.init_args.decoder.d_model", "${nope}"], 2, "d_model"),
    ("a user CheckpointIO", lambda p: ["--trainer.plugins", "lightning.pytorch.plugins.TorchCheckpointIO"], 2,
     "holds a CheckpointIO"),
]


@pytest.mark.parametrize(("name", "args", "code", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_input_is_one_line_with_its_exit_code(
    name: str, args: object, code: int, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path / "runs"), *args(tmp_path)) == code
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("lit_psion:")]
    assert len(errors) == 1 and message in errors[0], err
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/checkpoints/*.ckpt"))


def test_the_real_command_prints_exactly_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "lit_psion", "fit", "--config", TINY, "--data.files", "nowhere.txt",
               "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3
    assert result.stderr.strip() == ("lit_psion: error: data file not found: 'nowhere.txt' (check --data.files; a "
                                     f"relative path is read from {str(REPO_ROOT)!r})")


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_other_subcommands_refuse_a_checkpoint_of_another_model(subcommand: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3") == 0
    args = [subcommand, "--config", TINY, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last"]
    capsys.readouterr()
    assert main([*args, "--model.init_args.decoder.n_head", "4"]) == 4
    err = capsys.readouterr().err
    assert "was written by a model with signature" in err
    assert "(model.decoder.n_head: 2 in the run's config.yaml, 4 here)" in err  # the flag to fix, not only a digest


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_other_subcommands_name_data_that_builds_another_model(subcommand: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """A corpus with new characters gives the char tokenizer, so the model, another vocabulary: that is the data's
    doing (exit 3, as fit says), not model settings, which did not change (it said exit 4, 'model settings')."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((REPO_ROOT / "fixtures" / "tiny_corpus.txt").read_text())
    data = ("--data.files", str(corpus), "--data.test_fraction", "0.2")
    assert fit("--trainer.default_root_dir", str(tmp_path), *data, "--trainer.max_steps", "3") == 0
    corpus.write_text(corpus.read_text() + "\nZebras quote \u00e9t\u00e9 {~}\n")
    capsys.readouterr()
    assert main([subcommand, "--config", TINY, "--trainer.default_root_dir", str(tmp_path), *data,
                 "--ckpt_path", "last"]) == 3  # fmt: skip
    err = capsys.readouterr().err
    assert "builds another model from the same settings (its tokenizer sets the vocabulary; files changed: " \
        f"{corpus})" in err, err  # the changed file on the first try, not only after following the tokenizer advice
    assert "restore the changed file the run trained on, or evaluate other text under another path" in err, err


@pytest.mark.parametrize("subcommand", ["validate", "predict"])
def test_other_subcommands_load_the_latest_checkpoint(subcommand: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3") == 0
    args = [subcommand, "--config", TINY, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last"]
    limit = f"--trainer.limit_{'val' if subcommand == 'validate' else subcommand}_batches"
    capsys.readouterr()
    assert main([*args, limit, "1"]) == 0
    assert not (tmp_path / "lightning_logs").exists()
    assert "freshly initialised" not in capsys.readouterr().err
    assert main([*args[:-2], limit, "1"]) == 0  # no checkpoint: the untrained model, said so (it was silent)
    assert f"warning: {subcommand} without --ckpt_path uses freshly initialised weights" in capsys.readouterr().err


def test_test_evaluates_the_held_out_test_split_and_refuses_data_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    root = ("--trainer.default_root_dir", str(tmp_path))
    assert fit(*root, "--trainer.max_steps", "3") == 0
    run = tmp_path / read_latest(tmp_path)
    before = sorted((path.name, path.read_bytes()) for path in run.iterdir() if path.is_file())
    capsys.readouterr()
    assert main(["test", "--config", TINY, *root, "--ckpt_path", "last"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no test split" in err[0] and "--data.test_fraction" in err[0], err
    assert sorted((path.name, path.read_bytes()) for path in run.iterdir() if path.is_file()) == before
    held = ("--data.test_fraction", "0.2")
    assert fit(*root, *held, "--trainer.max_steps", "3") == 0
    assert main(["test", "--config", TINY, *root, *held, "--ckpt_path", "last"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"test/loss\s*│\s*\d", printed), printed  # Lightning's table of the test split's metrics
    guessed = [str(w.message) for w in recwarn if "infer the `batch_size`" in str(w.message)]
    assert not guessed, guessed  # test/loss is weighted by its tokens, not by a batch size Lightning guessed


def test_omegaconf_interpolation_in_a_config(tmp_path: Path) -> None:
    overlay = tmp_path / "interp.yaml"
    overlay.write_text("trainer:\n  max_steps: 4\n  val_check_interval: ${trainer.max_steps}\n"
                       "checkpoint:\n  every_n_train_steps: ${trainer.max_steps}\n")  # fmt: skip
    assert fit("--config", str(overlay), "--trainer.default_root_dir", str(tmp_path)) == 0
    config = yaml.safe_load((tmp_path / read_latest(tmp_path) / "config.yaml").read_text())
    assert config["checkpoint"]["every_n_train_steps"] == 4 and config["trainer"]["val_check_interval"] == 4


def test_the_model_context_follows_the_data_block_size() -> None:
    from lit_psion.cli import LitPsionCLI

    cli = LitPsionCLI(args=["--config", TINY, "--data.block_size", "24"], run=False)
    assert cli.model.decoder_config.block_size == 24 == cli.datamodule.block_size
    assert cli.model.decoder_config.vocab_size == cli.datamodule.vocab_size


MAX_TIMES = [("00:00:00:00", "positive"), ("00:00:-1:00", "positive"), ("ninety minutes", "DD:HH:MM:SS"),
             ("00:01:00", "DD:HH:MM:SS")]  # fmt: skip


@pytest.mark.parametrize(("value", "message"), MAX_TIMES, ids=[m[0] for m in MAX_TIMES])
def test_a_max_time_that_is_not_a_positive_duration_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                               value: str, message: str) -> None:  # fmt: skip
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_time", value) == 2
    err = capsys.readouterr().err
    assert "trainer.max_time" in err and message in err and value in err
    assert not any(tmp_path.iterdir())


def test_a_bad_input_is_reported_once_per_node_not_once_per_rank(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert fit(*args) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert fit(*args) == 2
    assert capsys.readouterr().err.count("lit_psion: error:") == 1


TRAINER_SETTINGS = [("--trainer.num_nodes", "0"), ("--trainer.devices", "-2"), ("--trainer.devices", "0"),
                    ("--trainer.default_root_dir", "")]  # fmt: skip


@pytest.mark.parametrize(("key", "value"), TRAINER_SETTINGS, ids=[f"{k} {v!r}" for k, v in TRAINER_SETTINGS])
def test_a_trainer_setting_lightning_would_crash_on_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    config = str(Path(TINY).resolve())
    monkeypatch.chdir(tmp_path)
    root = () if key.endswith("default_root_dir") else ("--trainer.default_root_dir", str(tmp_path / "runs"))
    assert fit(*root, key, value, config=config) == 2
    assert key.removeprefix("--") in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _modules_imported(*args: str) -> tuple[int, set[str]]:
    """Run ``python -m lit_psion ARGS`` with ``-X importtime``: its exit code and every module it imported."""
    command = [sys.executable, "-X", "importtime", "-m", "lit_psion", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    names = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result.returncode, names


def test_the_top_level_help_lists_every_subcommand_without_importing_lightning() -> None:
    from lit_psion.commands import COMMANDS, TRAINING

    result = subprocess.run([sys.executable, "-m", "lit_psion", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert listed == set(TRAINING) | set(COMMANDS)
    code, modules = _modules_imported("--help")
    assert code == 0 and "lightning" not in modules and "torch" not in modules


@pytest.mark.parametrize(("args", "code"), [((), 2), (("frobnicate",), 2)])
def test_no_command_or_an_unknown_one_is_one_line(args: tuple[str, ...], code: int) -> None:
    result = subprocess.run([sys.executable, "-m", "lit_psion", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == code
    if args:
        assert result.stderr.strip().splitlines() == [
            "lit_psion: error: unknown command 'frobnicate'; commands are fit, validate, test, predict, receipts, "
            "ckpt, doctor, mesh, compare, adapter, events, session, window, generate "
            "(python -m lit_psion --help)"]


def test_evidence_commands_answer_without_lightning_or_torch(tmp_path: Path) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3") == 0
    run = tmp_path / read_latest(tmp_path)
    from lit_psion.commands import COMMANDS

    helps = [(command, "--help") for command in COMMANDS]
    asked = [("receipts", "verify", str(run)), ("ckpt", "verify", str(run)), ("window", "status", str(tmp_path)),
             ("doctor", str(run)), ("compare", str(run), str(run)),
             ("session", "list", "--artifacts_root", str(tmp_path))]  # fmt: skip
    for args in [*helps, ("events", "predict", "--help"), ("adapter", "merge", "--help"), *asked]:
        code, modules = _modules_imported(*args)
        assert code in (0, 2), args
        assert not {"lightning", "torch"} & modules, (args, sorted({"lightning", "torch"} & modules))


def test_last_refuses_the_latest_run_of_another_model_family(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    graph = ["--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2", "--data.n_train", "8",
             "--data.n_val", "2", "--data.steps", "40", "--data.window", "8"]  # fmt: skip
    assert main(["fit", "--config", "configs/graph_core_oscillators.yaml", *graph]) == 0
    run = tmp_path / read_latest(tmp_path)
    before = (run / "run.json").read_bytes()
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last") == 4
    err = capsys.readouterr().err.strip().splitlines()
    wanted = "trains lit_psion.models.GraphCore, but this config builds lit_psion.models.DecoderLM"
    assert len(err) == 1 and wanted in err[0], err
    assert (run / "run.json").read_bytes() == before


def test_data_files_takes_the_several_paths_a_shell_glob_expands_to(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    from lit_psion.commands.argv_forms import gather_files

    assert gather_files(["fit", "--data.files", "a.md", "b.md", "--trainer.max_steps", "2"]) == [
        "fit", "--data.files", '["a.md", "b.md"]', "--trainer.max_steps", "2"]  # fmt: skip
    assert gather_files(["fit", "--data.files", "notes/*.md"]) == ["fit", "--data.files", "notes/*.md"]
    for empty in (["fit", "--data.files"], ["fit", "--data.files", "--trainer.max_steps", "2"]):  # said '--data'
        assert main([*empty, "--config", TINY]) == 2
        assert one_error_line(capsys.readouterr().err).startswith("lit_psion: error: --data.files was given no value")
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    text = Path("fixtures/tiny_corpus.txt").read_text()
    first.write_text(text)
    second.write_text(text[: len(text) // 2])
    root = tmp_path / "runs"
    assert fit("--data.files", str(first), str(second), "--trainer.max_steps", "2",
               "--trainer.default_root_dir", str(root)) == 0  # fmt: skip
    manifest = read_json(root / read_latest(root) / "data_manifest.json")
    assert [source["path"] for source in manifest["sources"]] == [str(first), str(second)]


def test_last_with_no_run_to_continue_creates_no_root(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "not-yet"
    assert fit("--trainer.default_root_dir", str(root), "--ckpt_path", "last") == 4
    assert "no run to continue" in capsys.readouterr().err
    assert not root.exists()
    for subcommand in ("validate", "predict"):  # told to "run once without it": freshly initialised weights, exit 0
        assert main([subcommand, "--config", TINY, "--trainer.default_root_dir", str(root), "--ckpt_path", "last"]) == 4
        err = capsys.readouterr().err
        assert f"no run to {subcommand} in" in err and "run once without it" not in err, err
        assert not root.exists()


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_another_family_is_named_before_the_data(subcommand: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """A graph-core config given a decoder checkpoint got the data module's 'other data' line (exit 3)."""
    assert fit("--trainer.default_root_dir", str(tmp_path / "dec"), "--trainer.max_steps", "3") == 0
    step = next((tmp_path / "dec" / read_latest(tmp_path / "dec") / "checkpoints").glob("step-*"))
    capsys.readouterr()
    assert main([subcommand, "--config", "configs/graph_core_oscillators.yaml", "--trainer.default_root_dir",
                 str(tmp_path / "gc"), "--ckpt_path", str(step)]) == 4  # fmt: skip
    assert "which trains lit_psion.models.DecoderLM, but this config builds" in capsys.readouterr().err
    assert not (tmp_path / "gc").exists() or not any((tmp_path / "gc").glob("*/run.json"))


def _loads_torch(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _deliver_ctrl_c() -> None:
    """In the child: SIGINT neither ignored nor blocked, whatever the test runner's process does with it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_a_ctrl_c_while_torch_and_lightning_load_is_one_line(tmp_path: Path) -> None:
    """It printed a traceback ending in KeyboardInterrupt (the exit code was already 130)."""
    import signal

    command = [sys.executable, "-m", "lit_psion", "fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=subprocess_env(),
                               preexec_fn=_deliver_ctrl_c)  # fmt: skip
    deadline = time.monotonic() + 60
    while not _loads_torch(process.pid) and time.monotonic() < deadline:  # inside `from lit_psion.cli import`
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == "lit_psion: interrupted"


def test_a_data_setting_that_differs_from_the_checkpoints_is_named_as_the_flag_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`test` on a run trained with --data.test_fraction, without it, said "restore the original data ... or
    start a new run without --ckpt_path", and listed token counts and digests that follow from the setting."""
    root = ("--trainer.default_root_dir", str(tmp_path))
    assert fit(*root, "--trainer.max_steps", "3", "--data.test_fraction", "0.2") == 0
    capsys.readouterr()
    assert main(["test", "--config", "fixtures/tiny.yaml", *root, "--ckpt_path", "last"]) == 3
    said = capsys.readouterr().err
    assert "(test_fraction: 0.2 -> 0.0); give the settings it was trained with (--data.test_fraction 0.2)" in said
    assert main(["test", "--config", "fixtures/tiny.yaml", *root, "--ckpt_path", "last",
                 "--data.test_fraction", "0.2"]) == 0  # fmt: skip


def test_a_resumed_runs_config_yaml_does_not_name_the_checkpoint_it_resumed(tmp_path: Path) -> None:
    """`fit --config RUN/config.yaml` silently started from the checkpoint the recorded ckpt_path named (or failed
    with "nothing to train")."""
    root = ("--trainer.default_root_dir", str(tmp_path))
    assert fit(*root, "--trainer.max_steps", "3") == 0
    assert fit(*root, "--trainer.max_steps", "6", "--ckpt_path", "last") == 0
    run = tmp_path / read_latest(tmp_path)
    assert yaml.safe_load((run / "config.yaml").read_text())["ckpt_path"] is None
    other = tmp_path / "again"
    assert main(["fit", "--config", str(run / "config.yaml"), "--trainer.default_root_dir", str(other)]) == 0
    assert read_json(other / read_latest(other) / "run.json")["attempts"] == 1  # a new run, from scratch


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_the_ckpt_path_help_says_what_lit_psion_takes(subcommand: str, capsys: pytest.CaptureFixture) -> None:
    """It showed Lightning's text ("best", "hpc", "registry"), each of which lit_psion refuses."""
    assert main([subcommand, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    described = text.split("--ckpt_path CKPT_PATH ", 2)[-1][:300]  # the option's own entry, past the usage line
    assert described.startswith("'last' (the latest run under --trainer.default_root_dir"), described
    assert "registry" not in described and "hpc" not in described


@pytest.mark.parametrize("profiler", [None, "simple"])
def test_a_fit_runs_lightnings_profiler_only_when_one_is_configured(profiler: str | None, tmp_path: Path) -> None:
    """Unconfigured, hooks run under QuietProfiler (no per-call context manager); a configured one is honoured."""
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.profilers import SimpleProfiler

    from lit_psion.cli import LitPsionCLI
    from lit_psion.profilers import QuietProfiler

    seen = []

    class Probe(Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            seen.append(trainer.profiler)
            seen.append(len(getattr(trainer.profiler, "recorded_durations", {}).get("run_training_batch", ())))

    flags = ["--trainer.profiler", profiler] if profiler else []
    LitPsionCLI(args=["fit", "--config", TINY, "--trainer.max_steps", "2", "--trainer.default_root_dir",
                      str(tmp_path), *flags], callbacks=[Probe()])  # fmt: skip
    assert type(seen[0]) is (SimpleProfiler if profiler else QuietProfiler)
    if profiler:
        assert seen[1] == 2  # it timed both steps
    else:
        assert seen[0].profile("run_training_batch") is seen[0].profile("training_step")  # one shared no-op


def test_a_whole_number_of_validation_batches_written_as_a_float_is_a_count(tmp_path: Path) -> None:
    """`--trainer.limit_val_batches 2.0` ran 2 batches, as Lightning reads it; the check added for -1 refused it."""
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3",
               "--trainer.limit_val_batches", "2.0") == 0  # fmt: skip
