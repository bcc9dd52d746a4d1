"""The shared tokenizer cache: a corpus's trained tokenizer is what the same text and settings train, whatever
the cache already holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lit_psion.datamodules import CorpusDataModule

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
