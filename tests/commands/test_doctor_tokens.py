"""doctor --tokens tokenizes a corpus run's sources again and holds the manifest's token digests to what they give.

A shared token cache rewritten together with its record, each split's first document left as it was (what a fit's
spot check reads), made a new fit train on other tokens than its text gives; the run recorded their digests as its
own, and doctor passed it ("all artifacts verified").
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow
import pyarrow.ipc
import pytest

from lit_psion.cli import main
from lit_psion.core.run import read_latest
from lit_psion.datamodules.token_cache import TOKEN_RECORD_FILE, split_streams, token_digest
from tests.helpers import fit


def _poison(entry: Path) -> None:
    """Every training document of the cache entry but the first reversed, and its record re-hashed to agree."""
    arrow = entry / "tokens.arrow"
    with pyarrow.ipc.open_stream(pyarrow.BufferReader(arrow.read_bytes())) as reader:
        table = reader.read_all()
    ids, val = table.column("ids").to_pylist(), table.column("val").to_pylist()
    first = val.index(False)
    ids = [row[::-1] if not held and index != first else row for index, (row, held) in enumerate(zip(ids, val,
                                                                                                     strict=True))]
    table = table.set_column(table.column_names.index("ids"), "ids", pyarrow.array(ids, table.schema.field("ids").type))
    with arrow.open("wb") as handle, pyarrow.ipc.new_stream(handle, table.schema) as writer:
        writer.write_table(table)
    record = json.loads((entry / TOKEN_RECORD_FILE).read_text())
    record["token_digests"] = {name: token_digest(tokens) for name, tokens in split_streams(arrow).items()}
    (entry / TOKEN_RECORD_FILE).write_text(json.dumps(record))


def test_a_run_trained_on_a_poisoned_token_cache_fails_doctor(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cache = tmp_path / "cache"
    settings = ("--data.cache_dir", str(cache), "--data.documents", "paragraph", "--trainer.max_steps", "2")
    assert fit("--trainer.default_root_dir", str(tmp_path / "clean"), *settings) == 0
    clean = tmp_path / "clean" / read_latest(tmp_path / "clean")
    capsys.readouterr()
    assert main(["doctor", str(clean), "--tokens"]) == 0
    assert "ok   tokens: the sources tokenized again give the manifest's" in capsys.readouterr().out
    (entry,) = (cache / "corpora").iterdir()
    _poison(entry)
    assert fit("--trainer.default_root_dir", str(tmp_path / "poisoned"), *settings) == 0  # the spot check passes it
    poisoned = tmp_path / "poisoned" / read_latest(tmp_path / "poisoned")
    assert json.loads((poisoned / "data_manifest.json").read_text())["token_digests"] != json.loads(
        (clean / "data_manifest.json").read_text())["token_digests"]  # it trained on other tokens  # fmt: skip
    capsys.readouterr()
    assert main(["doctor", str(poisoned)]) == 0  # (without --tokens: its records hold together)
    assert "tokens:" not in capsys.readouterr().out
    assert main(["doctor", str(poisoned), "--tokens"]) == 3
    out = capsys.readouterr().out
    assert "FAIL tokens: the sources tokenized again with the run's tokenizer give other train tokens" in out, out
