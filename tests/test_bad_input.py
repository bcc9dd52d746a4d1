"""Bad input is refused in one line with its documented exit code, before anything is half-written.

Three classes: a training loss that stops being finite (diverged, exit 7), optimizer settings out of range
(config, exit 2, before a run directory exists), and evidence ``compare`` cannot read (exit 5, nothing written).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml

from lit_psion.callbacks import Receipts
from lit_psion.checkpoint_io import ManifestCheckpointIO
from lit_psion.cli import main
from lit_psion.core import RunLayout, read_json
from lit_psion.core.chain import verify_log
from lit_psion.core.errors import ConfigError, TransactionError
from lit_psion.core.run import read_latest
from lit_psion.nn.optim import OptimizerConfig
from lit_psion.strategies import TransactionalStrategy, TransactionPolicy
from tests.helpers import fit
from tests.strategies.regression import Regression


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lit_psion: error:"), err
    assert "unexpected error" not in err
    return lines[0]


# --- a training loss that is not finite ----------------------------------------------------------------------


class ScaledLoss(Regression):
    """A regression whose loss on batch ``at`` (0-based) is multiplied by ``value`` (NaN, +inf, -inf)."""

    def __init__(self, at: int, value: float) -> None:
        super().__init__()
        self.at, self.value = at, value

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * self.value if batch_idx == self.at else loss

    def transaction_loss(self, batch: Any) -> torch.Tensor:
        loss = self.loss(batch)
        return loss * self.value if int(batch[0][0]) // self.batch_size == self.at else loss


def train(root: Path, module: L.LightningModule, every_n_steps: int, strategy: Any = "auto") -> None:
    trainer = L.Trainer(
        strategy=strategy, max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(root), plugins=[ManifestCheckpointIO()],
        callbacks=[Receipts(every_n_steps=every_n_steps)],
    )  # fmt: skip
    trainer.fit(module)


def receipts(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "receipts.jsonl").read_text().splitlines()]


NON_FINITE = [  # (case, batch made non-finite (0-based), the loss, receipts.every_n_steps)
    ("nan on the first step", 0, math.nan, 1),
    ("nan mid-run", 2, math.nan, 1),
    ("+inf", 3, math.inf, 1),
    ("-inf", 1, -math.inf, 1),
    ("nan on a step without a step receipt", 2, math.nan, 5),
]


@pytest.mark.parametrize(("case", "at", "value", "every"), NON_FINITE, ids=[c[0] for c in NON_FINITE])
def test_a_non_finite_loss_stops_a_plain_fit_as_diverged(
    tmp_path: Path, case: str, at: int, value: float, every: int
) -> None:
    with pytest.raises(TransactionError) as raised:
        train(tmp_path, ScaledLoss(at, value), every)
    message = str(raised.value)
    assert raised.value.exit_code == 7 and raised.value.failure_class == "diverged"
    assert f"at step {at + 1} is {value}" in message and "--trainer.strategy transactional" in message
    assert "lower the learning rate (the model's own setting)" in message and "\n" not in message
    assert verify_log(tmp_path / "receipts.jsonl", run_id=tmp_path.name).ok  # the NaN never reached the chain
    written = receipts(tmp_path)
    steps = [r["body"]["step_out"] for r in written if r["kind"] == "trainer_step"]
    assert steps == [s for s in range(1, at + 1) if s % every == 0]
    assert written[-1]["kind"] == "training_run" and written[-1]["body"]["event"] == "failed"
    assert written[-1]["body"]["outcome"] == "diverged"


DIVERGING = [  # (a tiny run of a family, its learning-rate flag): each family's divergence names its own flag
    (("--config", "fixtures/tiny.yaml"), "--model.init_args.optimizer.lr"),
    (("--config", "configs/graph_core_oscillators.yaml", "--data.init_args.n_bodies", "6",
      "--model.init_args.config.n_nodes", "6", "--data.init_args.n_train", "16", "--data.init_args.window", "8"),
     "--model.init_args.config.lr"),  # GraphCore: the decoder's flag was named, which it refuses (exit 2)
]  # fmt: skip


@pytest.mark.parametrize(("family", "flag"), DIVERGING, ids=["decoder", "graph-core"])
def test_a_divergence_names_the_flag_that_sets_the_runs_learning_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture, family: tuple[str, ...], flag: str
) -> None:
    from lit_psion.cli import main

    args = ["fit", *family, "--trainer.max_steps", "4", "--trainer.default_root_dir", str(tmp_path)]
    assert main([*args, flag, "1e30"]) == 7  # the flag is the run's own: the fit took it
    assert f"training diverged; lower the learning rate ({flag})" in capsys.readouterr().err
    failure = read_json(tmp_path / read_latest(tmp_path) / "run.json")["failure"]
    assert failure.startswith("TrainingDiverged: "), failure  # (it said TransactionError, with no transaction)


@pytest.mark.parametrize(("case", "at", "value", "every"), NON_FINITE, ids=[c[0] for c in NON_FINITE])
def test_a_transactional_fit_rolls_the_non_finite_step_back_and_goes_on(
    tmp_path: Path, case: str, at: int, value: float, every: int
) -> None:
    train(tmp_path, ScaledLoss(at, value), every, TransactionalStrategy(TransactionPolicy(rollback_tol=1.0)))
    written = receipts(tmp_path)
    assert verify_log(tmp_path / "receipts.jsonl", run_id=tmp_path.name).ok
    rolled_back = [r["body"] for r in written if r["kind"] == "transaction" and r["body"]["decision"] == "rollback"]
    assert rolled_back and "nonfinite_loss" in rolled_back[0]["reasons"]
    assert all(math.isfinite(r["body"]["loss"]) for r in written if r["kind"] == "trainer_step")
    assert written[-1]["kind"] == "chain_seal"


DIVERGING_FITS = [  # (case, flags that make the fit diverge)
    ("adamw, lr 1e12", ["--model.init_args.optimizer.name", "adamw"]),
    ("muon, lr 1e12", ["--model.init_args.optimizer.name", "muon"]),
    ("adamw, lr 1e12, a receipt every 4 steps", ["--receipts.every_n_steps", "4"]),
    *[(f"{name}, lr 1e30 (the largest taken: 3e38 overflowed in AdamW's step, exit 1)",  # a rate at the bound
       ["--model.init_args.optimizer.name", name, "--model.init_args.optimizer.lr", "1e30"])
      for name in ("adamw", "muon")],
]
EXPLODE = ["--model.init_args.optimizer.lr", "1e12", "--model.init_args.optimizer.warmup_steps", "0",
           "--trainer.gradient_clip_val", "0", "--checkpoint.every_n_train_steps", "3",
           "--trainer.max_steps", "6"]  # fmt: skip


@pytest.mark.parametrize(("case", "flags"), DIVERGING_FITS, ids=[c[0] for c in DIVERGING_FITS])
def test_a_diverging_cli_fit_exits_7_with_a_valid_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str, flags: list[str]
) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path), *EXPLODE, *flags) == 7
    line = one_error_line(capsys.readouterr().err)
    assert "training diverged" in line and "is nan" in line and "--trainer.strategy transactional" in line
    run_dir = tmp_path / read_latest(tmp_path)
    run = read_json(run_dir / "run.json")
    assert (run["status"], run["failure_class"]) == ("failed", "diverged")
    assert f"the training loss at step {run['global_step']} is nan" in line  # the step whose update made it ...
    assert main(["receipts", "verify", str(run_dir)]) == 0
    assert main(["doctor", str(run_dir)]) == 0
    assert f"failed after step {run['global_step']}" in capsys.readouterr().out  # ... the last step done


# --- optimizer settings out of range -------------------------------------------------------------------------

BAD_OPTIMIZER_FLAGS = [  # (flag, value, what the error names)
    ("weight_decay", "-1", "optimizer.weight_decay must be a finite number >= 0, got -1.0"),
    ("betas", "[1.5, 0.9]", "optimizer.betas[0] must be in [0, 1), got 1.5"),
    ("betas", "[0.9, 1.0]", "optimizer.betas[1] must be in [0, 1), got 1.0"),
    ("betas", "[-0.1, 0.9]", "optimizer.betas[0] must be in [0, 1), got -0.1"),
    ("momentum", "-1", "optimizer.momentum must be in [0, 1), got -1.0"),
    ("momentum", "1.5", "optimizer.momentum must be in [0, 1), got 1.5"),
    ("ns_steps", "0", "optimizer.ns_steps must be a whole number >= 1, got 0"),
    ("ns_steps", "-1", "optimizer.ns_steps must be a whole number >= 1, got -1"),
    ("lr", "0", "optimizer.lr must be a finite number > 0 and at most 1e+30, got 0.0"),
    ("lr", "-1e-3", "optimizer.lr must be a finite number > 0 and at most 1e+30, got -0.001"),
    ("lr", "1e300", "optimizer.lr must be a finite number > 0 and at most 1e+30, got 1e+300"),
    ("lr", "3e38", "optimizer.lr must be a finite number > 0 and at most 1e+30, got 3e+38"),
    ("muon_lr", "0", "optimizer.muon_lr must be a finite number > 0 and at most 1e+30 (or null to reuse lr), got "
     "0.0"),
    ("muon_lr", "1e39", "optimizer.muon_lr must be a finite number > 0 and at most 1e+30 (or null to reuse lr), got "
     "1e+39"),
    ("warmup_steps", "-1", "optimizer.warmup_steps must be a whole number >= 0, got -1"),
    ("decay_steps", "0", "optimizer.decay_steps must be a whole number >= 1 (or null for max_steps), got 0"),
    ("min_lr_ratio", "1.5", "optimizer.min_lr_ratio must be in [0, 1], got 1.5"),
]


@pytest.mark.parametrize(("flag", "value", "says"), BAD_OPTIMIZER_FLAGS, ids=[f"{f}={v}" for f, v, _ in
                                                                              BAD_OPTIMIZER_FLAGS])  # fmt: skip
def test_a_bad_optimizer_flag_exits_2_before_a_run_directory_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture, flag: str, value: str, says: str
) -> None:
    root = tmp_path / "runs"
    assert fit("--trainer.default_root_dir", str(root), f"--model.init_args.optimizer.{flag}={value}") == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert not root.exists() or not any(root.iterdir())  # no run directory, no latest_run.json


SETTINGS_A_CLASS_REFUSES = [  # (args, the line's start, what it names): a setting the chosen class does not take
    (("--model.init_args.decoder.n_hed", "3"), "model.decoder: DecoderConfig has no setting 'n_hed'; did you mean "
     "--model.decoder.n_head?", "'n_hed'"),  # (it said "DecoderConfig refuses the settings given for it": no near name)
    (("--data.init_args.blok_size", "3"), "data: CorpusDataModule has no setting 'blok_size'; did you mean "
     "--data.block_size?", "'blok_size'"),
    (("--config", "configs/graph_core_oscillators.yaml", "--config", "configs/overlays/fsdp.yaml"),
     "model: GraphCore refuses", "'optimizer.name'"),  # the overlay sets the decoder's optimizer
]  # fmt: skip


@pytest.mark.parametrize(("args", "starts", "names"), SETTINGS_A_CLASS_REFUSES,
                         ids=["nested typo", "data typo", "overlay for another model"])  # fmt: skip
def test_a_setting_the_class_does_not_take_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: tuple, starts: str, names: str
) -> None:
    root = tmp_path / "runs"
    assert main(["fit", "--config", "fixtures/tiny.yaml", *args, "--trainer.default_root_dir", str(root)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"lit_psion: error: {starts}") and names in line and "Union subtypes" not in line, line
    assert "--help" in line or ".help lit_psion." in line
    assert not root.exists() or not any(root.iterdir())


VALUES_OF_THE_WRONG_TYPE = [  # (args, the one line the user gets)
    (("--model.init_args.decoder.n_head", "x"), "model.decoder.n_head: 'x' is not an int; give one"),
    (("--data.init_args.batch_size", "1.5"), "data.batch_size: '1.5' is not an int; give one"),
    (("--trainer.strategy", "transactional", "--trainer.strategy.policy.grad_norm_max", "big"),
     "trainer.strategy.policy.grad_norm_max: 'big' is not a float or null; give one"),
    (("--trainer.max_steps", "x"), "trainer.max_steps: 'x' is not an int; give one"),
    (("--trainer.max_steps", "[1,2]"), "trainer.max_steps: '[1, 2]' is not an int; give one"),  # jsonargparse's words
    (("--trainer.max_steps", "null", "--trainer.max_epochs", "0"), "trainer.max_steps: 'null' is not an int; give one"),
    (("--trainer.max_steps", "1e3"), "trainer.max_steps: '1000.0' is a float, not an int (an exponent or a decimal "
     "point makes one); write 1000"),
    # Said "OptimizerConfig refuses the settings given for it: ... (a --config overlay may have set it ...)":
    (("--model.init_args.optimizer.name", "sgd"),
     "model.optimizer.name: 'sgd' is not one of 'adamw', 'muon'; give one of them"),
    (("--data.init_args.tokenizer", "wordpiece"), "data.tokenizer: 'wordpiece' is not one of 'bpe', 'char'; give one "
     "of them"),
    (("--trainer.gradient_clip_val", "abc"),
     "trainer.gradient_clip_val: 'abc' is not an int or float or null; give one"),
    (("--model.init_args.optimizer.lr", "nan"), "model.optimizer.lr: 'nan' is not a number; give a finite one"),
    (("--trainer.gradient_clip_val=-inf",), "trainer.gradient_clip_val: '-inf' is read as text, not a number; write "
     "-.inf where the setting takes no limit, else give a finite number"),
    # Said "is not a finite number" while the same policy in YAML (rollback_tol: .inf) is accepted:
    (("--trainer.strategy", "transactional", "--trainer.strategy.policy.rollback_tol", "inf"),
     "trainer.strategy.policy.rollback_tol: 'inf' is read as text, not a number; write .inf where the setting "
     "takes no limit, else give a finite number"),
    (("--model.init_args.optimizer.lr", "-1e-3"), "--model.init_args.optimizer.lr was given no value; give it one, "
     "written as --FLAG=VALUE when the value starts with '-' (such as --model.optimizer.lr=-1e-3)"),  # said --model
    (("--trainer.max_steps",), "--trainer.max_steps was given no value; give it one, written as --FLAG=VALUE when "
     "the value starts with '-' (such as --model.optimizer.lr=-1e-3)"),
    # An empty value said "Expected a <class 'int'>. Got value:" (nested: "'-' is not an int", the next line's dash):
    (("--trainer.max_steps=",), "trainer.max_steps was given an empty value; give it one (--trainer.max_steps=VALUE), "
     "or leave the flag out"),
    (("--trainer.strategy", "transactional", "--trainer.strategy.policy.buffer_len="),
     "trainer.strategy.policy.buffer_len was given an empty value; give it one "
     "(--trainer.strategy.policy.buffer_len=VALUE), or leave the flag out"),
    # Said "TransactionalStrategy refuses the settings given for it: Parser key "policy": (a --config overlay ...)":
    (("--trainer.strategy", "transactional", "--trainer.strategy.policy", "5"), "trainer.strategy.policy: '5' is not "
     "a mapping of its settings; give them one by one (--trainer.strategy.policy.KEY VALUE), or as a mapping in a "
     "--config file"),
    # Said "'bogus' is not a typing.Literal[64, 32, 16] or typing.Literal['transformer-engine', ...] or ...":
    (("--trainer.precision", "bogus"), "trainer.precision: 'bogus' is not one of 64, 32, 16, 'transformer-engine', "
     "'transformer-engine-float16', '16-true', '16-mixed', 'bf16-true', 'bf16-mixed', '32-true', '64-true', '64', "
     "'32', '16', 'bf16', or null; give one of them"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "says"), VALUES_OF_THE_WRONG_TYPE,
                         ids=["nested int", "data int", "policy float", "trainer int", "a list", "null",
                              "an int written 1e3",
                              "optimizer name", "tokenizer", "trainer union", "nan", "-inf", "inf where .inf is taken",
                              "a value read as a flag",
                              "no value", "empty", "empty nested", "a scalar for a mapping", "choices"])  # fmt: skip
def test_a_value_of_the_wrong_type_is_named_with_the_type_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: tuple, says: str
) -> None:
    assert main(["fit", "--config", "fixtures/tiny.yaml", *args, "--trainer.default_root_dir", str(tmp_path)]) == 2
    assert one_error_line(capsys.readouterr().err) == f"lit_psion: error: {says}"


ALIAS_BOMB = ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))).encode()
"""Ten values, aliased ten times over eight levels: 10 ** 9 once expanded."""
MANY_KEYS = ("trainer:\n" + "".join(f"  k{i}: {i}\n" for i in range(12_000))).encode()
BAD_FILES = [  # (what goes in the file, how it is given, exit code, what the one line says)
    (b"trainer:\n  max_steps: [1, 2\nmodel: {\n", "--config", 2, "is not valid YAML at line 3, column 6"),
    (b"trainer: \xff\n", "--config", 2, "is not valid YAML (UnicodeDecodeError)"),
    (None, "--data.init_args.files", 3, "is a directory; give its files"),
    (b"# only a comment\n", "--config", 2, "is empty, not a mapping of settings"),
    (b"- 1\n- 2\n", "--config", 2, "holds a YAML list, not a mapping of settings"),
    (b"42\n", "--config", 2, "holds a YAML int, not a mapping of settings"),
    # Named no file (jsonargparse: 'in "<file>"'), or suggested raising a safety limit:
    (b"trainer:\n  max_steps: 3\n  max_steps: 4\n", "--config", 2,
     "is not valid YAML at line 3, column 3 (key 'max_steps' is given twice in one mapping)"),
    (ALIAS_BOMB, "--config", 2, "holds more than 10000 YAML values once its aliases are expanded"),
    (MANY_KEYS, "--config", 2, "holds more than 10000 YAML values once its aliases are expanded"),
]  # fmt: skip


CONFIGS_LIGHTNING_CANNOT_USE = [  # (the config's edit, what the one line says) -- each was exit 1
    (lambda config: config.update(trainer=None), "trainer must be a mapping of Trainer settings, got None"),
    (lambda config: config["model"]["init_args"]["decoder"].update(n_layer="${oops}"),
     "model.init_args.decoder.n_layer: its interpolation does not resolve (Interpolation key 'oops' not found); "
     "fix the ${...} reference in the --config file (an interpolation sees only the keys of its own file"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "says"), CONFIGS_LIGHTNING_CANNOT_USE, ids=["null trainer", "interpolation"])
def test_a_config_that_cannot_be_used_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch, edit: Callable[[dict], None],
                                                  says: str) -> None:  # fmt: skip
    config = yaml.safe_load(Path("fixtures/tiny.yaml").read_text())
    edit(config)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # the config alone: no --trainer setting on the command line to mend it
    root = tmp_path / "runs"
    assert main(["fit", "--config", str(tmp_path / "config.yaml")]) == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert not root.exists() or not any(root.iterdir())


@pytest.mark.parametrize(("content", "flag", "code", "says"), BAD_FILES,
                         ids=["broken YAML", "not UTF-8", "a directory", "empty", "a list", "a number", "a key twice",
                              "an alias bomb", "twelve thousand keys"])  # fmt: skip
def test_a_bad_file_on_the_command_line_is_named_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            content: bytes | None, flag: str, code: int,
                                                            says: str) -> None:  # fmt: skip
    given = tmp_path / "given"
    given.mkdir() if content is None else given.write_bytes(content)
    root = tmp_path / "runs"
    assert main(["fit", "--config", "fixtures/tiny.yaml", flag, str(given), "--trainer.default_root_dir",
                 str(root)]) == code  # fmt: skip
    line = one_error_line(capsys.readouterr().err)
    assert str(given) in line and says in line, line
    assert not root.exists() or not any(root.iterdir())


def test_a_pipe_as_a_data_file_is_named_as_such_not_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A FIFO exists but cannot be pinned by digest (read twice, it would not give the same bytes)."""
    pipe = tmp_path / "corpus.txt"
    os.mkfifo(pipe)
    root = tmp_path / "runs"
    assert main(["fit", "--config", "fixtures/tiny.yaml", "--data.files", str(pipe), "--trainer.default_root_dir",
                 str(root)]) == 3  # fmt: skip
    line = one_error_line(capsys.readouterr().err)
    assert f"data file {str(pipe)!r} is not a regular file" in line, line
    assert not root.exists() or not any(root.iterdir())


BAD_OPTIMIZER_VALUES = [  # (field, value) a Python caller can pass that the command line already refuses
    ("lr", math.inf), ("lr", math.nan), ("lr", True), ("muon_lr", math.inf), ("weight_decay", math.nan),
    ("weight_decay", math.inf), ("momentum", math.nan), ("ns_steps", 2.5), ("warmup_steps", 1.5),
    ("decay_steps", math.inf), ("min_lr_ratio", math.nan), ("betas", (0.9,)), ("betas", (0.9, 0.95, 0.99)),
    ("betas", (0.9, math.nan)), ("betas", 0.9), ("betas", ("0.9", 0.95)),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), BAD_OPTIMIZER_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_OPTIMIZER_VALUES])
def test_every_numeric_optimizer_field_is_range_checked(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"optimizer\.{field}"):
        OptimizerConfig(**{field: value})


def test_a_first_adamw_step_float32_cannot_hold_is_refused() -> None:
    """lr 1e30 (under the bound) with betas[0] 0.9999999999 made AdamW's step size lr / (1 - betas[0]) = 1e40, which
    overflowed converting to float32 inside the first step: exit 1."""
    with pytest.raises(ConfigError, match=r"optimizer\.lr / \(1 - betas\[0\]\) is AdamW's first step size, and "
                                          r"1e\+30 / \(1 - 0\.9999999999\) is over 1e\+36"):
        OptimizerConfig(lr=1e30, betas=(0.9999999999, 0.999))
    OptimizerConfig(lr=1e30, betas=(0.9, 0.999))  # 1e31: huge, and a divergence (exit 7), not an overflow
    OptimizerConfig(lr=1e-3, betas=(0.9999999999, 0.999))  # 1e7


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as raised:
        OptimizerConfig(lr=-1.0, weight_decay=-1.0, ns_steps=0)
    assert all(f"optimizer.{name}" in str(raised.value) for name in ("lr", "weight_decay", "ns_steps"))


GOOD_OPTIMIZER_EDGES = [  # the ends of each valid range are accepted
    {"weight_decay": 0.0}, {"betas": (0.0, 0.0)}, {"betas": [0.5, 0.999]}, {"momentum": 0.0}, {"ns_steps": 1},
    {"warmup_steps": 0}, {"decay_steps": 1}, {"min_lr_ratio": 0.0}, {"min_lr_ratio": 1.0}, {"lr": 1e12},
    {"muon_lr": None}, {"decay_steps": None}, {"lr": 1},
]  # fmt: skip


@pytest.mark.parametrize("values", GOOD_OPTIMIZER_EDGES, ids=[str(v) for v in GOOD_OPTIMIZER_EDGES])
def test_the_edges_of_each_valid_range_are_accepted(values: dict) -> None:
    config = OptimizerConfig(**values)
    assert isinstance(config.betas, tuple)


# --- evidence ``compare`` cannot read --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[RunLayout]:
    root = tmp_path_factory.mktemp("compare")
    layouts = []
    with pytest.MonkeyPatch.context() as patch:  # the session's cache, as the function-scoped tests see it
        patch.setenv("LIT_PSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        for seed in ("1", "2"):
            assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3", "--seed_everything",
                       seed) == 0  # fmt: skip
            layouts.append(RunLayout(root, read_latest(root)))
    return layouts


def write(name: str, data: bytes) -> Callable[[RunLayout], None]:
    return lambda run: (run.run_dir / name).write_bytes(data)


UNREADABLE = [  # (case, the harm, the file the error names, what it says)
    ("an empty run.json", write("run.json", b""), "run.json", "not JSON"),
    ("a run.json list", write("run.json", b"[]"), "run.json", "a JSON list"),
    ("a run.json with a step in words", lambda run: run.run_file.write_text(
        run.run_file.read_text().replace('"global_step": 3', '"global_step": "three"')), "run.json", "'three'"),
    ("a non-UTF-8 metrics.csv", write("metrics.csv", b"step,train/loss\n1,\xff\xfe\n"), "metrics.csv", "utf-8"),
    ("a metrics.csv step in words", write("metrics.csv", b"step,train/loss\nsix,1.0\n"), "metrics.csv", "six"),
    ("a metrics.csv value in words", write("metrics.csv", b"step,train/loss\n1,low\n"), "metrics.csv", "low"),
    ("a metrics.csv without a step column", write("metrics.csv", b"loss\n1.0\n"), "metrics.csv", "step"),
    ("a metrics.csv of one garbage line", write("metrics.csv", b"garbage,,,\n"), "metrics.csv", "no step column"),
    ("an empty metrics.csv", write("metrics.csv", b""), "metrics.csv", "it is empty"),
    ("broken YAML in config.yaml", write("config.yaml", b"trainer: [1, 2\nmodel: {"), "config.yaml", "YAML"),
    ("a non-UTF-8 config.yaml", write("config.yaml", b"trainer: \xff\n"), "config.yaml", "utf-8"),
    ("a config.yaml list", write("config.yaml", b"- 1\n- 2\n"), "config.yaml", "a YAML list"),
    ("a config.yaml scalar", write("config.yaml", b"hello\n"), "config.yaml", "a YAML str"),
    ("a config.yaml nested too deeply", write("config.yaml", b"a: " + b"[" * 100_000 + b"]" * 100_000),
     "config.yaml", "nested too deeply"),
]  # fmt: skip


@pytest.mark.parametrize("which", [0, 1], ids=["first run", "second run"])
@pytest.mark.parametrize(("case", "harm", "file", "says"), UNREADABLE, ids=[c[0] for c in UNREADABLE])
def test_compare_exits_5_on_evidence_it_cannot_read_and_writes_nothing(
    two_runs: list[RunLayout], tmp_path: Path, capsys: pytest.CaptureFixture, which: int, case: str,
    harm: Callable, file: str, says: str,
) -> None:  # fmt: skip
    copies = []
    for run in two_runs:
        shutil.copytree(run.run_dir, tmp_path / run.run_id)
        copies.append(RunLayout(tmp_path, run.run_id))
    harm(copies[which])
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["compare", *(str(c.run_dir) for c in copies), "--out", str(out)]) == 5
    line = one_error_line(capsys.readouterr().err)
    assert str(copies[which].run_dir / file) in line and says in line
    assert not out.exists()


DATA_SETTINGS_THAT_WERE_EXIT_1 = [  # (args, what the one line names) -- each was an exit 1 before it was checked
    (("--data.files", "null"), "data.files must be a path, a glob or 'stdlib' (or a list of them), got None"),
    (("--data.files", "''"), "data.files holds an empty path ''"),
    (("--data.val_fraction", "null"), "data.val_fraction must be in (0, 1), got None"),
    (("--data.test_fraction", "null"), "data.test_fraction must be >= 0 and below 1, got None"),
    (("--data.seed", "null"), "data.seed must be a whole number in [0, 2**63), got None"),
    (("--data.seed", "99999999999999999999999"), "data.seed must be a whole number in [0, 2**63)"),
    (("--data.cache_dir", "fixtures/tiny.yaml"), "'fixtures/tiny.yaml' is not a directory"),
    (("--data.cache_dir", "fixtures/tiny.yaml/cache"), "'fixtures/tiny.yaml' is not a directory"),
    (("--data.cache_dir", "/proc/lit_psion_cache"), "data.cache_dir '/proc/lit_psion_cache' cannot be created "
     "(No such file or directory); give a directory this process can write"),  # (the token cache's mkdir: exit 1)
]  # fmt: skip


@pytest.mark.parametrize(("args", "says"), DATA_SETTINGS_THAT_WERE_EXIT_1,
                         ids=["files null", "files empty", "val null", "test null", "seed null", "seed huge",
                              "cache a file", "cache under a file", "cache uncreatable"])  # fmt: skip
def test_a_data_setting_of_no_use_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: tuple, says: str
) -> None:
    value = "" if args[1] == "''" else args[1]
    assert main(["fit", "--config", "fixtures/tiny.yaml", args[0], value, "--trainer.default_root_dir",
                 str(tmp_path / "runs")]) == 2  # fmt: skip
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("lit_psion: error: ") and says in line, line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("vocab", ["word level without end of text", "empty bpe"])
def test_a_tokenizer_file_that_cannot_end_a_document_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture, vocab: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid tokenizers file without lit_psion's end-of-text token cannot tokenize a corpus: one line naming
    the file and the token, and no half-built token cache left in the cache directory."""
    from tokenizers import Tokenizer, models

    model = models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]") if "word" in vocab else models.BPE()
    Tokenizer(model).save(str(tmp_path / "tok.json"))
    monkeypatch.setenv("LIT_PSION_CACHE", str(tmp_path / "cache"))
    assert main(["fit", "--config", "fixtures/tiny.yaml", "--data.tokenizer_file", str(tmp_path / "tok.json"),
                 "--trainer.default_root_dir", str(tmp_path / "runs")]) == 3  # fmt: skip
    line = one_error_line(capsys.readouterr().err)
    assert "tok.json" in line and "<|endoftext|>" in line, line
    assert not list((tmp_path / "cache").rglob("*.tmp-*"))
