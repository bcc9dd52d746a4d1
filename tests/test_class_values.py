"""A class setting (--model, --data, --trainer.callbacks) given something other than a class path, as a careless user
gives it: one line naming the value and the spelling that works, exit 2, no run written. Each was jsonargparse's
account of every type it tried (or named a preset's callback it was never given)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.cli import main
from tests.test_bad_input import one_error_line

CLASS_VALUES = [  # (args, the one line after "lit_psion: error: ")
    (("--model", "lit_psion/models/decoder.py"), "model: 'lit_psion/models/decoder.py' is a file, not a class; give "
     "the class as module.ClassName (such as lit_psion.models.DecoderLM), whose module Python imports from the "
     "working directory or PYTHONPATH"),
    (("--model", "my_model.py"), "model: 'my_model.py' is a file, not a class; give the class as module.ClassName"),
    (("--data", "./data.py"), "data: './data.py' is a file, not a class; give the class as module.ClassName (such as "
     "lit_psion.datamodules.CorpusDataModule)"),
    (("--trainer.callbacks", "callbacks/mine.py"), "trainer.callbacks: 'callbacks/mine.py' is a file, not a class"),
    (("--trainer.callbacks", "mine.py"), "trainer.callbacks: 'mine.py' is a file, not a class"),  # said "cannot be
    # imported: Expected a <class 'list'>; fix the module it is in"
    (("--data", "no_such_settings.yaml"), "data: 'no_such_settings.yaml': no such file of its settings (class_path "
     "and init_args); give an existing one, or give the class as module.ClassName"),
    (("--model", "Transformer"), "model: no class named 'Transformer' is known; give the class as module.ClassName "
     "(such as lit_psion.models.DecoderLM)"),
    (("--model", "DecodrLM"), "model: no class named 'DecodrLM' is known; did you mean lit_psion.models.DecoderLM? "
     "Else give the class as module.ClassName"),
    (("--trainer.callbacks", "earlystoping"), "trainer.callbacks: no class named 'earlystoping' is known; did you "
     "mean lightning.pytorch.callbacks.EarlyStopping?"),
    (("--trainer.callbacks", "EarlyStopping"), "trainer.callbacks: EarlyStopping needs monitor, which nothing gave; "
     "give it; `python -m lit_psion fit --trainer.callbacks.help lightning.pytorch.callbacks.EarlyStopping` lists "
     "the settings it takes"),  # said "(a --config overlay may have set it for another class)"
    (("--trainer.callbacks", "[{class_path: lightning.pytorch.callbacks.EarlyStopping, monitor: val/loss}]"),
     "trainer.callbacks: the settings beside class_path are not read; put them under init_args ({class_path: "
     "lightning.pytorch.callbacks.EarlyStopping, init_args: {SETTING: VALUE}})"),  # named GenerateSample's settings
]  # fmt: skip


@pytest.mark.parametrize(("args", "says"), CLASS_VALUES, ids=lambda x: x[-1] if isinstance(x, tuple) else None)
def test_a_class_setting_given_no_class_path_says_how_to_give_one(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: tuple[str, ...], says: str
) -> None:
    root = tmp_path / "runs"
    argv = ["fit", "--config", "fixtures/tiny.yaml", *args, "--trainer.default_root_dir", str(root)]
    argv += ["--trainer.callbacks+=lit_psion.callbacks.GenerateSample"] if args[0] == "--trainer.callbacks" else []
    assert main(argv) == 2
    assert one_error_line(capsys.readouterr().err).startswith(f"lit_psion: error: {says}")
    assert not root.exists()


@pytest.mark.parametrize("section", ["model", "trainer.callbacks"])
def test_a_config_files_settings_beside_class_path_are_named_so(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                section: str) -> None:  # fmt: skip
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("model:\n  class_path: lit_psion.models.DecoderLM\n  learning_rate: 0.1\n" if section == "model"
                       else "trainer:\n  callbacks:\n    - class_path: lit_psion.callbacks.GenerateSample\n"
                       "      max_new_tokens: 4\n")  # fmt: skip
    root = tmp_path / "runs"
    argv = ["fit", "--config", "fixtures/tiny.yaml", "--config", str(overlay), "--trainer.default_root_dir", str(root)]
    assert main(argv) == 2
    cls = "lit_psion.models.DecoderLM" if section == "model" else "lit_psion.callbacks.GenerateSample"
    assert one_error_line(capsys.readouterr().err) == (
        f"lit_psion: error: {section}: the settings beside class_path are not read; put them under init_args "
        f"({{class_path: {cls}, init_args: {{SETTING: VALUE}}}})")  # fmt: skip
    assert not root.exists()


UNTYPED = '''
import lightning as L
from lit_psion.models import DecoderLM


class Every(L.Callback):
    def __init__(self, n, label: str = "x", *, m=0, **rest):
        super().__init__()
        self.n = n


class Sized(DecoderLM):
    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
'''


@pytest.mark.parametrize(("args", "says"), [
    (("--trainer.callbacks", "untyped.Every"), "trainer.callbacks: untyped.Every needs n (its __init__ gives no "
     "default and no type), which nothing gave; give it (--trainer.callbacks.n VALUE), or a default in its __init__"),
    (("--model", "untyped.Sized"), "model: untyped.Sized needs width (its __init__ gives no default and no type), "
     "which nothing gave; give it (--model.width VALUE), or a default in its __init__"),
], ids=["a callback", "a model"])  # fmt: skip
def test_an_untyped_setting_without_a_default_that_nothing_gave_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], says: str
) -> None:
    """jsonargparse passed it None without a word (a typed one it refuses as required), and config.yaml said null."""
    (tmp_path / "untyped.py").write_text(UNTYPED)
    monkeypatch.syspath_prepend(str(tmp_path))
    root = tmp_path / "runs"
    argv = ["fit", "--config", "fixtures/tiny.yaml", *args, "--trainer.default_root_dir", str(root)]
    assert main(argv) == 2
    assert one_error_line(capsys.readouterr().err) == f"lit_psion: error: {says}"
    assert not root.exists()
    given = "--trainer.callbacks.n" if args[0] == "--trainer.callbacks" else "--model.width"
    assert main([*argv, given, "3", "--trainer.max_steps", "1"]) == 0  # given: it trains
