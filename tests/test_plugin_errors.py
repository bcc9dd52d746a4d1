"""What a user's own code plugged into a fit (a model, a callback, a receipt kind) can get wrong, and the one line
that says so: a class path that does not import, a constructor that fails, a setup Lightning refuses, a sys.exit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import pytest
import torch

from lit_psion.callbacks import EvidenceCallback
from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.digest import canonical_json
from lit_psion.core.errors import ConfigError, raised_in_user_code
from lit_psion.core.receipts import RECEIPT_KINDS, ReceiptBody, register_receipt
from lit_psion.core.run import read_latest
from tests.test_bad_input import one_error_line


class FailingToBuild(L.LightningModule):
    """A model whose constructor fails with an error of its own (a bug)."""

    def __init__(self, data_facts: Any = None) -> None:
        raise RuntimeError("index 48000000000 is out of bounds for the model's own table")


class OutOfMemoryToBuild(L.LightningModule):
    """A model whose constructor asks for more memory than the machine gives."""

    def __init__(self, data_facts: Any = None) -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 48000000000 bytes")


class FailingWhileHandling(L.LightningModule):
    """A constructor that raises its own error while handling another."""

    def __init__(self, data_facts: Any = None) -> None:
        try:
            {}["weights"]
        except KeyError:
            raise RuntimeError("the constructor's own failure") from None


def test_the_error_a_constructor_raised_is_said_not_the_one_it_was_handling(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    args = ["fit", "--config", "fixtures/tiny.yaml", "--model", f"{__name__}.FailingWhileHandling",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 14
    assert "lit_psion: error: your code raised RuntimeError: the constructor's own failure (raised at" in \
        capsys.readouterr().err  # fmt: skip


def test_a_constructor_failure_is_said_as_itself_not_as_the_parsers_account_of_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """jsonargparse wraps it in "Does not validate against any of the Union subtypes", followed by every setting
    given: the line was kilobytes long, and named a ValueError. The model's own error is its (exit 14), not a bug of
    lit_psion's (exit 1)."""
    args = ["fit", "--config", "fixtures/tiny.yaml", "--model", f"{__name__}.FailingToBuild",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 14
    err = capsys.readouterr().err.strip()
    assert err.startswith("lit_psion: error: your code raised RuntimeError: index 48000000000 is out of bounds for the "
                          f"model's own table (raised at {__file__}:"), err  # the model's own line
    assert err.endswith(", in __init__); fix it (set LIT_PSION_DEBUG=1 for the traceback)") and "\n" not in err, err
    args[args.index(f"{__name__}.FailingToBuild")] = f"{__name__}.OutOfMemoryToBuild"  # the sizes asked: exit 2
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        "lit_psion: error: the machine ran out of memory (can't allocate memory: you tried to allocate 48000000000 "
        "bytes); lower the model's sizes (its width, depth or nodes: --model.help CLASS_PATH lists them), the data's "
        "batch or context size, or run where more memory is free")  # fmt: skip


CLASS_PATHS_THAT_DO_NOT_IMPORT = [  # (args, what the one line says): each said the class "refuses the settings given"
    (("--model", "lit_psion.models.DecoderLMx"), "model: no class 'lit_psion.models.DecoderLMx' to import (module "
     "'lit_psion.models' has no attribute 'DecoderLMx'); check the class_path's module and class name"),
    (("--trainer.callbacks+=no_such_module.Evidence",), "trainer.callbacks: no class 'no_such_module.Evidence' to "
     "import (No module named 'no_such_module')"),
    (("--trainer.callbacks+=collections.OrderedDict",), "trainer.callbacks: collections.OrderedDict is not a Callback; "
     "give a subclass of Callback"),
    (("--model={'class_path': 'lit_psion.models.DecoderLM', 'init_args': {'m': 1}}",), "model: DecoderLM refuses the "
     "settings given for it: Option 'm' is not accepted"),  # a class that imported, given a setting it lacks
    (("--trainer.callbacks+=clashing_kind.Evidence",), "trainer.callbacks: clashing_kind.Evidence cannot be imported: "
     "receipt kind 'trainer_step' is already registered by lit_psion.core.receipts.TrainerStepReceipt; give Clash a "
     "kind name of its own; fix the module it is in"),  # it printed jsonargparse's account, the reason twice
]  # fmt: skip


@pytest.mark.parametrize(("args", "says"), CLASS_PATHS_THAT_DO_NOT_IMPORT,
                         ids=["typo", "no module", "not a callback", "a setting it lacks", "import raises"])
def test_a_class_path_that_does_not_import_is_named_with_why(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch, args: tuple,
                                                             says: str) -> None:  # fmt: skip
    (tmp_path / "clashing_kind.py").write_text(
        "import dataclasses\nfrom typing import ClassVar\n\nfrom lit_psion.callbacks import EvidenceCallback\n"
        "from lit_psion.core.receipts import ReceiptBody, register_receipt\n\n\n@register_receipt\n"
        "@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)\nclass Clash(ReceiptBody):\n"
        "    kind: ClassVar[str] = 'trainer_step'\n\n\nclass Evidence(EvidenceCallback):\n    pass\n")  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    root = tmp_path / "runs"
    assert main(["fit", "--config", "fixtures/tiny.yaml", *args, "--trainer.default_root_dir", str(root)]) == 2
    assert says in one_error_line(capsys.readouterr().err)


CALLBACKS_IN_A_CONFIG_FILE = [  # (the callbacks list of a YAML file, the one line): each was jsonargparse's account
    ("- class_path: no_such_module.Evidence", "trainer.callbacks: no class 'no_such_module.Evidence' to import (No "
     "module named 'no_such_module'); check the class_path's module and class name"),
    ("- class_path: lit_psion.core.receipts.ReceiptBody", "trainer.callbacks: lit_psion.core.receipts.ReceiptBody is "
     "not a Callback; give a subclass of Callback"),  # a receipt class given as a callback
    ("- {class_path: lit_psion.callbacks.GenerateSample, init_args: {max_new_tokens: lots}}",
     "trainer.callbacks.max_new_tokens: 'lots' is not an int; give one"),
    ("- {class_path: lit_psion.callbacks.GenerateSample, init_args: {frobnicate: 5}}", "trainer.callbacks: "
     "GenerateSample refuses the settings given for it: Option 'frobnicate' is not accepted (a --config overlay may "
     "have set it for another class); `python -m lit_psion fit --trainer.callbacks.help lit_psion.callbacks."
     "GenerateSample` lists"),
]  # fmt: skip
CALLBACK_SETTINGS_GIVEN_ON_THE_COMMAND_LINE = [  # it said "Callback refuses ...: Option ... is not accepted"
    (("--trainer.callbacks.max_new_tokens=abc",), "trainer.callbacks.max_new_tokens: 'abc' is not an int; give one"),
    (("--trainer.callbacks.max_new_tokens", "1.5"), "trainer.callbacks.max_new_tokens: '1.5' is not an int; give one"),
    (("--trainer.callbacks.tokens=5",), "trainer.callbacks: GenerateSample has no setting 'tokens'; did you mean "
     "--trainer.callbacks.max_new_tokens?"),
]  # fmt: skip


@pytest.mark.parametrize(("listed", "says"), CALLBACKS_IN_A_CONFIG_FILE,
                         ids=["no module", "a receipt class", "a value of the wrong type", "a setting it lacks"])
def test_a_callback_a_config_file_lists_wrongly_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                      listed: str, says: str) -> None:  # fmt: skip
    (tmp_path / "callbacks.yaml").write_text(f"trainer:\n  callbacks:\n    {listed}\n")
    args = ["fit", "--config", "fixtures/tiny.yaml", "--config", str(tmp_path / "callbacks.yaml"),
            "--trainer.default_root_dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(args) == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("given", "says"), CALLBACK_SETTINGS_GIVEN_ON_THE_COMMAND_LINE,
                         ids=["not a number", "a float", "a setting it lacks"])
def test_a_wrong_setting_of_a_callback_added_on_the_command_line_names_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture, given: tuple, says: str
) -> None:
    """jsonargparse also tries the setting on Lightning's base Callback, and that try's complaint was the one said."""
    args = ["fit", "--config", "fixtures/tiny.yaml", "--trainer.callbacks+=lit_psion.callbacks.GenerateSample", *given,
            "--trainer.default_root_dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(args) == 2
    assert says in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("callback", ["lightning.pytorch.callbacks.ModelCheckpoint",
                                      "lightning.pytorch.callbacks.OnExceptionCheckpoint"])  # fmt: skip
def test_a_lightning_checkpoint_callback_is_refused_naming_lit_psions_own_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture, callback: str
) -> None:
    """Lightning's account ("configured with `enable_checkpointing=False`") named a setting the user never gave."""
    args = ["fit", "--config", "fixtures/tiny.yaml", f"--trainer.callbacks+={callback}",
            "--trainer.default_root_dir", str(tmp_path / "runs")]  # fmt: skip
    if callback.endswith("OnExceptionCheckpoint"):
        args.append(f"--trainer.callbacks.dirpath={tmp_path}")
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"trainer.callbacks: {callback.rsplit('.', 1)[0]}." in line and "--checkpoint.every_n_train_steps" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("options", [{"on_step": False, "on_epoch": True}, {"logger": False}],
                         ids=["the epoch's row", "the progress bar only"])  # fmt: skip
def test_a_value_under_that_name_that_never_reaches_the_step_row_is_not_refused(tmp_path: Path,
                                                                              options: dict[str, bool]) -> None:
    """What Lightning would not write into the step's row: an epoch value, and a value kept from the loggers."""
    args = ["fit", "--config", "fixtures/tiny.yaml", f"--trainer.callbacks+={__name__}.LogsOurName",
            "--trainer.callbacks.hook=on_train_batch_end", "--trainer.callbacks.name=train/loss",
            f"--trainer.callbacks.options={json.dumps(options)}", "--trainer.log_every_n_steps", "1",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0


def test_a_name_the_row_writes_is_refused_also_once_its_rows_join_a_users_values(tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture) -> None:
    """With a user's own per-step metric, lit_psion's values join Lightning's row through self.log, under the same
    keys a callback's self.log in on_train_batch_end uses: a user's train/lr logged there from step 4 is still
    another writer's, refused, not taken for lit_psion's own."""
    args = ["fit", "--config", "fixtures/tiny.yaml", "--trainer.callbacks+=tests.helpers.LogsOnStep",
            f"--trainer.callbacks+={__name__}.LogsOurName", "--trainer.callbacks.hook=on_train_batch_end",
            "--trainer.callbacks.name=train/lr", "--trainer.callbacks.from_step=4", "--trainer.log_every_n_steps", "2",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "self.log('train/lr', ...) in on_train_batch_end" in line, line
    record = read_json(tmp_path / read_latest(tmp_path) / "run.json")
    assert (record["status"], record["failure_class"]) == ("failed", "config_invalid"), record


class LogsTwice(L.Callback):
    """A user's callback that logs one name twice in a step with different arguments (Lightning refuses that)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        pl_module.log("user/value", 1.0)
        pl_module.log("user/value", 1.0, prog_bar=True)


def test_a_setup_lightning_refuses_mid_fit_is_a_setting_not_our_bug(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """Lightning's MisconfigurationException (here: a name logged twice in a step) was exit 1, 'unexpected'."""
    args = ["fit", "--config", "fixtures/tiny.yaml", f"--trainer.callbacks+={__name__}.LogsTwice",
            "--trainer.log_every_n_steps", "1", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("lit_psion: error: Lightning refuses the setup: You called `self.log(user/value, ...)` "
                           "twice"), line
    record = read_json(tmp_path / read_latest(tmp_path) / "run.json")  # recorded as what the exit code says
    assert (record["status"], record["failure_class"]) == ("failed", "config_invalid"), record


class LogsOurName(L.Callback):
    """A user's callback that logs, in ``hook``, a value under a name lit_psion's step row writes."""

    def __init__(self, hook: str, name: str, options: dict[str, bool] | None = None, from_step: int = 0) -> None:
        self.name, self.options, self.from_step = name, options or {}, from_step
        setattr(self, hook, self._log)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step >= self.from_step:
            pl_module.log(self.name, 1.0, **self.options)


REFUSED = [("on_train_batch_end", "train/loss", {}), ("on_before_optimizer_step", "train/lr", {}),
           ("on_train_batch_end", "telemetry/grad_norm", {}), ("on_train_batch_end", "train/loss", {"on_epoch": True})]


@pytest.mark.parametrize(("hook", "name", "options"), REFUSED)
def test_a_value_logged_under_a_name_the_step_row_writes_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                    hook: str, name: str, options: dict) -> None:
    """Two writers of one name in one row: Lightning would write both, one silently lost. Refused in one line that
    names the value, the hook and another name to use. Logged per step and per epoch too (Lightning's row names it
    ``train/loss_step``): lit_psion's own would be a second ``self.log`` of that name in that hook."""
    args = ["fit", "--config", "fixtures/tiny.yaml", f"--trainer.callbacks+={__name__}.LogsOurName",
            f"--trainer.callbacks.hook={hook}", f"--trainer.callbacks.name={name}",
            f"--trainer.callbacks.options={json.dumps(options)}",
            "--trainer.log_every_n_steps", "1", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"self.log('{name}', ...) in {hook}" in line and f"'user/{name}'" in line, line
    record = read_json(tmp_path / read_latest(tmp_path) / "run.json")
    assert (record["status"], record["failure_class"]) == ("failed", "config_invalid"), record


def test_early_stopping_on_a_metric_nothing_logs_is_a_setting(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Lightning's EarlyStopping raises a RuntimeError for a monitored name nothing logs (was exit 1, 'unexpected')."""
    args = ["fit", "--config", "fixtures/tiny.yaml", "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping",
            "--trainer.callbacks.monitor=val/los", "--trainer.callbacks.check_on_train_epoch_end=false",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("lit_psion: error: Lightning refuses the setup: Early stopping conditioned on metric "
                           "`val/los`") and "`val/loss`" in line, line
    record = read_json(tmp_path / read_latest(tmp_path) / "run.json")
    assert (record["status"], record["failure_class"]) == ("failed", "config_invalid"), record


class ExitsMidFit(L.Callback):
    """A user's callback that calls ``sys.exit`` at step 2."""

    def __init__(self, code: int | str = 0) -> None:
        self.code = code

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == 2:
            raise SystemExit(self.code)


@pytest.mark.parametrize("code", [0, "a message"])
def test_a_sys_exit_inside_the_fit_is_not_success_and_is_said(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              code: int | str) -> None:  # fmt: skip
    """SystemExit(0) exited 0 while run.json said failed; SystemExit('a message') exited 2 and printed nothing. It is
    the callback's: exit 14, user_code_failed."""
    args = ["fit", "--config", "fixtures/tiny.yaml", f"--trainer.callbacks+={__name__}.ExitsMidFit",
            f"--trainer.callbacks.code={code}", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 14
    err = capsys.readouterr().err
    said = f"lit_psion: error: your code raised SystemExit({code!r}) inside Lightning's trainer (raised at {__file__}:"
    assert said in err, err
    record = read_json(tmp_path / read_latest(tmp_path) / "run.json")
    assert (record["status"], record["failure_class"]) == ("failed", "user_code_failed"), record


class CountsSteps(L.Callback):
    """A user's stateful callback that keys its state by class (Lightning's default ``state_key``)."""

    def __init__(self, every: int = 1) -> None:
        self.every, self.seen = every, 0

    def on_train_batch_end(self, *args: Any) -> None:
        self.seen += 1

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}


class CountsStepsByEvery(CountsSteps):
    """The same, keyed by its settings: two with different settings checkpoint apart."""

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every=self.every)


def test_two_callbacks_sharing_a_state_key_are_a_setting_and_keyed_ones_train(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    """Two of one stateful class were exit 1, 'unexpected error: RuntimeError: Found more than one stateful ...'."""
    root = ["--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2"]

    def fit_with(name: str, second_every: int) -> int:
        added = [f"--trainer.callbacks+={__name__}.{name}", f"--trainer.callbacks+={__name__}.{name}",
                 f"--trainer.callbacks.every={second_every}"]  # fmt: skip
        return main(["fit", "--config", "fixtures/tiny.yaml", *added, *root])

    assert fit_with("CountsSteps", 2) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == (f"lit_psion: error: trainer.callbacks: two {__name__}.CountsSteps callbacks keep state under one "
                    "state_key ('CountsSteps'), so a checkpoint could not tell their states apart; keep one, or give "
                    "the class a state_key property that includes its settings (Lightning's Callback.state_key)"), line
    assert not list(tmp_path.iterdir())  # refused before a run directory was made
    assert fit_with("CountsStepsByEvery", 2) == 0
    assert fit_with("CountsStepsByEvery", 1) == 2  # the same settings twice: the same key


class EmitsWhatItWasGiven(EvidenceCallback):
    """A user's evidence callback that emits, at step 2, a body of the kind named by ``what``."""

    def __init__(self, what: str = "dict") -> None:
        self.what = what

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step != 2:
            return
        if self.what == "dict":
            self.emit(trainer, {"kind": "note", "step": 2})  # type: ignore[arg-type]
        else:
            self.emit(trainer, UnregisteredNote(step=2))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UnregisteredNote(ReceiptBody):
    kind: ClassVar[str] = "test_unregistered_note"
    step: int


EMITTED = [("dict", "EmitsWhatItWasGiven emitted a dict, not a receipt body"),
           ("unregistered", "emitted a UnregisteredNote whose kind 'test_unregistered_note' is not registered")]


@pytest.mark.parametrize(("what", "says"), EMITTED, ids=["dict", "unregistered"])
def test_emitting_what_is_not_a_registered_receipt_body_is_a_setting_naming_it(
    what: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A dict, or a body whose class never registered, was exit 1 at a line of lit_psion's ("unexpected error")."""
    args = ["fit", "--config", "fixtures/tiny.yaml", f"--trainer.callbacks+={__name__}.EmitsWhatItWasGiven",
            f"--trainer.callbacks.what={what}", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert says in line and "@register_receipt" in line, line
    assert main(["receipts", "verify", str(tmp_path / read_latest(tmp_path))]) == 0  # nothing half-written


def test_register_receipt_refuses_a_class_whose_fields_it_could_not_write_or_a_kind_without_a_name() -> None:
    """A class that is not a dataclass wrote ``"body": {}``; one without a kind registered ``""``, and the next such
    class anywhere failed to import as ``kind '' is already registered``."""

    class NotADataclass(ReceiptBody):
        kind: ClassVar[str] = "test_not_a_dataclass"
        step = 2

    with pytest.raises(ConfigError, match="NotADataclass: a receipt body is a dataclass subclassing ReceiptBody"):
        register_receipt(NotADataclass)

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Nameless(ReceiptBody):
        step: int

    with pytest.raises(ConfigError, match="Nameless: its kind is ''; give it a name of its own"):
        register_receipt(Nameless)
    assert "test_not_a_dataclass" not in RECEIPT_KINDS and "" not in RECEIPT_KINDS


class UnpinnedData(L.LightningDataModule):
    """A user's plain DataModule: random tokens, nothing that pins or replays them."""

    def train_dataloader(self) -> Any:
        tokens = torch.randint(0, 64, (16, 17), generator=torch.Generator().manual_seed(0))
        pairs = [{"input_ids": row[:-1], "targets": row[1:]} for row in tokens]
        return torch.utils.data.DataLoader(pairs, batch_size=4)


def test_data_no_replay_module_pins_trains_with_a_warning_saying_so(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """It trained silently with no data_manifest.json, though runs are said to pin their data by digest."""
    args = ["fit", "--config", "fixtures/tiny.yaml", "--data", f"{__name__}.UnpinnedData", "--trainer.max_steps",
            "2", "--trainer.limit_val_batches", "0", "--model.init_args.decoder.vocab_size", "64",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert ("lit_psion: warning: the fit's data module UnpinnedData is not a ReplayDataModule: its data is not "
            "pinned by digest (no data_manifest.json)") in err, err
    assert not (tmp_path / read_latest(tmp_path) / "data_manifest.json").exists()


class RaisesAtStep(L.Callback):
    """A user's callback that fails at step 3: by itself, through a library it calls, or inside lit_psion's code."""

    def __init__(self, how: str) -> None:
        self.how = how

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step != 3:
            return
        if self.how == "itself":
            raise KeyError("the callback's own table has no 'step'")
        if self.how == "through a library":
            torch.zeros(2) @ torch.zeros(3)
        canonical_json({"loss": float("nan")})  # lit_psion raises: a ValueError of its own, not a typed error


@pytest.mark.parametrize(("how", "code", "failure"), [("itself", 14, "user_code_failed"),
                                                      ("through a library", 14, "user_code_failed"),
                                                      ("inside lit_psion", 1, "internal")])  # fmt: skip
def test_an_error_of_the_users_code_is_its_and_one_of_lit_psions_is_a_bug(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture, how: str,
                                                                          code: int, failure: str) -> None:  # fmt: skip
    """Exit 1 is for lit_psion's bugs: an exception whose innermost frame outside installed libraries is the user's
    (raised there, or by a library it called) is exit 14, user_code_failed, naming the file, line and function, and
    what the run keeps to continue from."""
    args = ["fit", "--config", "fixtures/tiny.yaml", f"--trainer.callbacks+={__name__}.RaisesAtStep",
            f"--trainer.callbacks.how={how}", "--checkpoint.every_n_train_steps", "2",
            "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == code
    err = capsys.readouterr().err
    line = one_error_line(err) if code == 14 else err.strip()
    run = tmp_path / read_latest(tmp_path)
    if code == 14:
        assert line.startswith("lit_psion: error: your code raised ") and f"(raised at {__file__}:" in line, line
        assert line.endswith(f", in on_train_batch_end); fix it; continue run {run.name} from its latest durable "
                             f"checkpoint with --trainer.default_root_dir {tmp_path} --ckpt_path last (set "
                             "LIT_PSION_DEBUG=1 for the traceback)"), line
    else:
        assert line.startswith("lit_psion: unexpected error: ValueError: canonical JSON cannot encode") and \
            "lit_psion/core/digest.py:" in line, line  # fmt: skip
    record = read_json(run / "run.json")
    assert (record["status"], record["failure_class"]) == ("failed", failure), record


def _raised(action: Any) -> BaseException:
    try:
        action()
    except Exception as error:  # (any: what is asked is where it came from)
        return error
    raise AssertionError("nothing raised")


def test_whose_error_it_is_follows_the_innermost_frame_outside_installed_libraries() -> None:
    from lit_psion.callbacks.telemetry import copy_into

    assert raised_in_user_code(_raised(lambda: 1 / 0))  # this file is a user's
    assert raised_in_user_code(_raised(lambda: json.loads("{")))  # a library the user's code called wrongly
    assert not raised_in_user_code(_raised(lambda: canonical_json(float("inf"))))  # raised in lit_psion.core
    assert not raised_in_user_code(_raised(lambda: copy_into(None, [1])))  # lit_psion.callbacks, wherever it lives
    assert not raised_in_user_code(RuntimeError("never raised"))  # no traceback: nobody's


@pytest.mark.parametrize(("error", "fatal"), [(KeyError("step"), True), (ConnectionResetError("the uploader's"), False),
                                              (OSError("a share that went away"), False)])  # fmt: skip
def test_under_mesh_launch_the_users_error_stops_the_node_unless_a_restart_may_pass_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, error: Exception, fatal: bool
) -> None:
    from lit_psion.commands.records import say_user_code_failed
    from lit_psion.core.membership import NODE_MARKERS_ENV

    monkeypatch.setenv(NODE_MARKERS_ENV, str(tmp_path))
    assert say_user_code_failed(f"{type(error).__name__}: {error}", _raised(lambda: _raise(error)), None) == 14
    markers = [read_json(path) for path in tmp_path.glob("fatal-*.json")]
    assert [marker["code"] for marker in markers] == ([14] if fatal else [])
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"lit_psion: error: your code raised {type(error).__name__}"), line


def _raise(error: Exception) -> None:
    raise error
