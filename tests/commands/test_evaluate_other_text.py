"""validate, test and predict of a run's checkpoint on text it never trained on, with its own tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core.run import read_latest
from tests.helpers import REPO_ROOT, TINY, fit

TEXT = (REPO_ROOT / "fixtures" / "tiny_corpus.txt").read_text()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3", "--data.test_fraction", "0.2") == 0
    return root / read_latest(root)


def _other_text(tmp_path: Path, text: str) -> str:
    path = tmp_path / "other.txt"
    path.write_text(text)
    return str(path)


def _reversed_paragraphs(tmp_path: Path) -> list[str]:
    """Other text in the run's alphabet: every paragraph's words in reverse order."""
    paragraphs = [" ".join(reversed(p.split(" "))) for p in TEXT.split("\n\n")]
    return ["--data.files", _other_text(tmp_path, "\n\n".join(paragraphs))]


def _new_characters(tmp_path: Path) -> list[str]:
    """Other text with characters the run never saw: its own char tokenizer has another vocabulary size."""
    return ["--data.files", _other_text(tmp_path, TEXT[::-1] + "\n\nZebras quote \u00e9t\u00e9 {~}\n")]


def _another_alphabet(tmp_path: Path) -> list[str]:
    """Other text whose own char tokenizer has the run's vocabulary size but other ids (one letter swapped for a
    letter the run never saw): the model loads, and every id would mean another character."""
    (missing,) = [c for c in "QXZJ" if c not in TEXT][:1] or ["\u00e9"]
    (present,) = [c for c in "zqxj" if c in TEXT][:1]
    return ["--data.files", _other_text(tmp_path, TEXT.replace(present, missing)[::-1])]


CASES = [  # (case, data arguments from tmp_path, with the run's tokenizer, exit code, what the error says)
    ("other text, the run's tokenizer", _reversed_paragraphs, True, 0, None),
    ("other text, its own tokenizer (the run's: the same alphabet)", _reversed_paragraphs, False, 0, None),
    ("other text, its own tokenizer (another vocabulary)", _new_characters, False, 3, "--data.tokenizer_file"),
    ("other text with new characters, the run's tokenizer", _new_characters, True, 0, None),
    ("other text, its own tokenizer of the same size", _another_alphabet, False, 3, "its token ids would mean"),
    ("the run's text under another split", lambda tmp: ["--data.test_fraction", "0.3"], True, 3, "test_fraction"),
    ("the run's text and more", lambda tmp: ["--data.files", str(REPO_ROOT / "fixtures" / "tiny_corpus.txt"),
                                             *_reversed_paragraphs(tmp)[1:]], True, 3, "files added"),
]  # fmt: skip


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
@pytest.mark.parametrize(("case", "data", "own_tokenizer", "code", "says"), CASES, ids=[c[0] for c in CASES])
def test_a_checkpoint_is_evaluated_on_other_text_only_with_its_tokenizer_and_never_on_text_it_trained_on(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, subcommand: str, case: str, data, own_tokenizer: bool,
    code: int, says: str | None,
) -> None:
    """Evaluating on other text was refused whatever the tokenizer (the replay state refused any manifest change),
    though the refusal advised exactly that. A split of the run's own text other than its own could hold out a
    document it trained on, so that stays refused."""
    before = sorted((path.name, path.read_bytes()) for path in run.iterdir() if path.is_file())
    tokenizer = ["--data.tokenizer_file", str(run / "tokenizer.json")] if own_tokenizer else []
    held = [] if "--data.test_fraction" in data(tmp_path) else ["--data.test_fraction", "0.2"]
    argv = [subcommand, "--config", TINY, *data(tmp_path), *held, *tokenizer, "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "1", "--trainer.limit_predict_batches", "1", "--ckpt_path",
            str(sorted((run / "checkpoints").glob("step-*"))[-1])]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    if says is not None:
        (line,) = [line for line in err.splitlines() if line.startswith("lit_psion: error:")]
        assert says in line, line
    assert sorted((path.name, path.read_bytes()) for path in run.iterdir() if path.is_file()) == before


def test_a_file_the_run_trained_on_edited_since_is_not_other_text(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """Its last paragraphs cut, the file the run trained on (same path, new digest) passed as "other text": a tail
    split then held out paragraphs the run had trained on, and validate reported their loss without a word."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    root = tmp_path / "runs"
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3", "--data.files", str(corpus),
               "--data.test_fraction", "0.2", "--data.split", "tail") == 0  # fmt: skip
    paragraphs = TEXT.split("\n\n")
    corpus.write_text("\n\n".join(paragraphs[: int(len(paragraphs) * 0.8)]))
    (tmp_path / "link.txt").symlink_to(corpus)
    # The same file spelt otherwise passed (paths were compared as written): `./`, `..`, a link to it.
    spellings = [str(corpus), f"{tmp_path}/./corpus.txt", f"{tmp_path}/runs/../corpus.txt", str(tmp_path / "link.txt")]
    for subcommand, spelt in zip(("validate", "test", "predict", "validate"), spellings, strict=True):
        capsys.readouterr()
        assert main([subcommand, "--config", TINY, "--data.files", spelt, "--data.test_fraction", "0.2",
                     "--data.split", "tail", "--trainer.default_root_dir", str(root), "--ckpt_path", "last"]) == 3
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion: error:")]
        assert f"refusing to evaluate the checkpoint on {spelt!r}: the run trained on a file of that path" in line
