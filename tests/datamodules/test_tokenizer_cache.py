"""The shared tokenizer cache: a corpus's trained tokenizer is what the same text and settings train, whatever
the cache already holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import RunLayout
from lit_psion.core.run import read_latest
from lit_psion.datamodules import CorpusDataModule
from lit_psion.datamodules.tokenizer import keep_recorded, train_tokenizer
from tests.helpers import fit

CORPUS = Path("fixtures/tiny_corpus.txt")


def _bpe(files: Path, cache: Path, split: str) -> CorpusDataModule:
    return CorpusDataModule(files=str(files), tokenizer="bpe", vocab_size=300, block_size=32, batch_size=4,
                            split=split, documents="paragraph", cache_dir=str(cache))  # fmt: skip


@pytest.mark.parametrize("split", ["hash", "tail"])
def test_the_same_bytes_under_another_path_get_the_tokenizer_their_own_split_trains(
    tmp_path: Path, split: str
) -> None:
    """Under the hash split each document's split is hashed from its file's path, so the same bytes elsewhere hold
    other validation documents: a tokenizer cached for the first path was trained on the second's validation text
    (and a resume after the cache was cleared was refused for a tokenizer nobody changed)."""
    one, two = tmp_path / "one" / "s.txt", tmp_path / "two" / "s.txt"
    for path in (one, two):
        path.parent.mkdir()
        shutil.copy(CORPUS, path)
    shared = tmp_path / "shared"
    first, second = _bpe(one, shared, split).prepare(), _bpe(two, shared, split).prepare()
    alone = _bpe(two, tmp_path / "alone", split).prepare()  # what the second trains with nothing cached
    assert second.tokenizer_digest == alone.tokenizer_digest
    assert second.digest == alone.digest
    if split == "hash":  # (this corpus's paragraphs are split otherwise under the two paths)
        assert first.token_counts["val"] != second.token_counts["val"]
    else:  # the tail split does not read paths: one entry serves both
        assert first.tokenizer_digest == second.tokenizer_digest
        assert len(list((shared / "tokenizers").iterdir())) == 1


def _tiny_run(tmp_path: Path, *args: str) -> RunLayout:
    root = tmp_path / "runs"
    assert fit("--trainer.default_root_dir", str(root), "--data.init_args.cache_dir", str(tmp_path / "cache"),
               *args) == 0  # fmt: skip
    return RunLayout(root, read_latest(root))


def test_doctor_fails_a_cached_tokenizer_a_resume_refuses(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """doctor checked a corpus run's token cache but not its tokenizer: one rewritten in the shared cache with its
    digest record passed doctor ("all artifacts verified") while the resume refused it (exit 3)."""
    run = _tiny_run(tmp_path)
    (cached,) = (tmp_path / "cache").glob("tokenizers/*/tokenizer.json")
    capsys.readouterr()
    assert main(["doctor", str(run.run_dir)]) == 0
    assert f"ok   tokenizer: matches the manifest's tokenizer_digest ('{cached}')" in capsys.readouterr().out
    other = train_tokenizer("char", ["another text, other ids"], 256).to_str()
    keep_recorded(cached, other)  # digest record rewritten to match: every reader trusts it
    assert main(["doctor", str(run.run_dir)]) == 3
    out = capsys.readouterr().out
    assert "FAIL tokenizer" in out and "a resume refuses it (its digest record was rewritten to match)" in out
    assert fit("--trainer.default_root_dir", str(run.root), "--data.init_args.cache_dir", str(tmp_path / "cache"),
               "--ckpt_path", "last", "--trainer.max_steps", "16") == 3  # fmt: skip
    cached.write_text(other + " ")  # an edit its digest record disagrees with: set aside and trained again
    assert main(["doctor", str(run.run_dir)]) == 3
    assert "the next a resume sets it aside" not in (out := capsys.readouterr().out)
    assert "FAIL tokenizer" in out and "sets it aside and trains it again" in out
    cached.unlink()
    assert main(["doctor", str(run.run_dir)]) == 0
    assert "ok   tokenizer: absent from" in capsys.readouterr().out


def test_doctor_checks_the_tokenizer_file_a_run_was_given(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = _tiny_run(tmp_path / "first")
    given = tmp_path / "given.json"
    shutil.copy(first.run_dir / "tokenizer.json", given)
    run = _tiny_run(tmp_path / "second", "--data.tokenizer_file", str(given))
    capsys.readouterr()
    assert main(["doctor", str(run.run_dir)]) == 0
    assert f"ok   tokenizer: --data.tokenizer_file '{given}' matches" in capsys.readouterr().out
    given.write_text(train_tokenizer("char", ["another text, other ids"], 256).to_str())
    assert main(["doctor", str(run.run_dir)]) == 3
    out = capsys.readouterr().out
    assert f"FAIL tokenizer: --data.tokenizer_file '{given}' (sha256 " in out and "is not the tokenizer the run" in out
    assert f"resume with --data.tokenizer_file {run.run_dir / 'tokenizer.json'}" in out
    given.unlink()  # moved elsewhere, as a source file may be: said on the ok line
    assert main(["doctor", str(run.run_dir)]) == 0
    assert f"ok   tokenizer: --data.tokenizer_file '{given}' not found (a resume needs it, or --data.tokenizer_file " \
        f"{run.run_dir / 'tokenizer.json'})" in capsys.readouterr().out  # fmt: skip
