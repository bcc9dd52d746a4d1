"""A file where the cache keeps a directory (``tokenizers``, ``corpora``, one tokenizer's digest directory) is
one line naming that file, exit 2, and no run: it was exit 1 ("Not a directory" raised inside jsonargparse's link
from the data to the model's data facts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import fit


@pytest.mark.parametrize("blocked", ["tokenizers", "corpora", "tokenizers/*"])
def test_a_file_where_the_cache_keeps_a_directory_is_named_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       blocked: str) -> None:  # fmt: skip
    cache, root = tmp_path / "cache", tmp_path / "runs"
    monkeypatch.setenv("LIT_PSION_CACHE", str(cache))
    if blocked.endswith("*"):  # a tokenizer's own directory, under a cache made by a fit before
        assert fit("--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path / "first")) == 0
        (taken,) = (cache / "tokenizers").iterdir()
        for file in taken.iterdir():
            file.unlink()
        taken.rmdir()
    else:
        cache.mkdir()
        taken = cache / blocked
    taken.write_text("not a directory")
    capsys.readouterr()
    assert fit("--trainer.max_steps", "2", "--trainer.default_root_dir", str(root)) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"lit_psion: error: {str(taken)!r} is a file where a directory belongs"), last
    assert "move it aside or remove it" in last
    assert not root.exists() or not [path for path in root.iterdir() if path.is_dir()]
    taken.unlink()
    assert fit("--trainer.max_steps", "2", "--trainer.default_root_dir", str(root)) == 0
