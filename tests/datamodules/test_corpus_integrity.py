"""Data that is not what the manifest says: tampered token caches, non-UTF-8 sources, max_bytes, vocabulary changes."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from lit_psion.core import atomic_write_json, read_json
from lit_psion.core.errors import DataError
from lit_psion.datamodules import CorpusDataModule, DataConfigError
from lit_psion.datamodules.token_cache import TOKEN_RECORD_FILE, TOKENS_FILE, split_streams, token_digest
from tests.helpers import fit

CORPUS = Path("fixtures/tiny_corpus.txt")


def corpus(cache: Path, files: str | list[str] = str(CORPUS), **kwargs: object) -> CorpusDataModule:
    settings = {"tokenizer": "char", "block_size": 32, "batch_size": 4, "max_bytes": None, **kwargs}
    return CorpusDataModule(files=files, cache_dir=str(cache), **settings)


def cache_of(data: CorpusDataModule) -> Path:
    return data.cache_dir / "corpora" / data.prepare().inputs_digest()


# -- the token cache is bound to its contents ---------------------------------------------------


def _rewrite_table(arrow: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    table = pa.ipc.open_stream(arrow.read_bytes()).read_all()
    table = change(table)
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _reverse_ids(table: pa.Table) -> pa.Table:
    """Every document keeps its length; the token ids are the corpus's ids in reverse order."""
    ids = table.column("ids").combine_chunks()
    values = ids.flatten()
    reversed_values = values.take(pa.array(range(len(values) - 1, -1, -1)))
    index = table.schema.get_field_index("ids")
    return table.set_column(index, table.schema.field("ids"), pa.ListArray.from_arrays(ids.offsets, reversed_values))


def _swap_splits(table: pa.Table) -> pa.Table:
    index = table.schema.get_field_index("val")
    return table.set_column(index, table.schema.field("val"), pc.invert(table.column("val")))


def rewrite_ids(cache: Path, other: Path) -> None:
    _rewrite_table(cache / TOKENS_FILE, _reverse_ids)


def truncate(cache: Path, other: Path) -> None:
    data = (cache / TOKENS_FILE).read_bytes()
    (cache / TOKENS_FILE).write_bytes(data[: len(data) // 2])


def delete_record(cache: Path, other: Path) -> None:
    (cache / TOKEN_RECORD_FILE).unlink()


def swap_splits(cache: Path, other: Path) -> None:
    _rewrite_table(cache / TOKENS_FILE, _swap_splits)


def swap_tokens_with_another_corpus(cache: Path, other: Path) -> None:
    shutil.copy(other / TOKENS_FILE, cache / TOKENS_FILE)


def swap_caches_with_another_corpus(cache: Path, other: Path) -> None:
    parked = cache.with_name("parked")
    cache.rename(parked)
    other.rename(cache)
    parked.rename(other)


def corrupt_record(cache: Path, other: Path) -> None:
    (cache / TOKEN_RECORD_FILE).write_text("{not json")


def _record_again(cache: Path) -> None:
    """Rewrite the digest record to match what the cache now holds: a cache that agrees with itself."""
    record = read_json(cache / TOKEN_RECORD_FILE)
    digests = {name: token_digest(tokens) for name, tokens in split_streams(cache / TOKENS_FILE).items()}
    atomic_write_json(cache / TOKEN_RECORD_FILE, {**record, "token_digests": digests})


def rewrite_ids_and_record(cache: Path, other: Path) -> None:
    _rewrite_table(cache / TOKENS_FILE, _reverse_ids)
    _record_again(cache)


def _reverse_last_document(table: pa.Table) -> pa.Table:
    """Only the last document's ids reversed: past what a load spot-checks (each split's first document)."""
    ids = table.column("ids").to_pylist()
    ids[-1] = ids[-1][::-1]
    index = table.schema.get_field_index("ids")
    return table.set_column(index, table.schema.field("ids"), pa.array(ids, type=table.schema.field("ids").type))


def rewrite_the_tail_and_record(cache: Path, other: Path) -> None:
    _rewrite_table(cache / TOKENS_FILE, _reverse_last_document)
    _record_again(cache)


def _shift_ids(table: pa.Table) -> pa.Table:
    ids = table.column("ids").combine_chunks()
    shifted = pc.add(ids.flatten(), pa.scalar(10_000, ids.flatten().type))
    index = table.schema.get_field_index("ids")
    return table.set_column(index, table.schema.field("ids"), pa.ListArray.from_arrays(ids.offsets, shifted))


def shift_ids_and_record(cache: Path, other: Path) -> None:
    _rewrite_table(cache / TOKENS_FILE, _shift_ids)
    _record_again(cache)


TAMPERING = [
    (rewrite_ids, "does not match its digest record (train, val tokens differ)"),
    (rewrite_ids_and_record, "does not begin its train split with its first document's tokens"),  # trained on
    (shift_ids_and_record, "holds token ids outside the tokenizer's"),  # exit 1 in the model's embedding
    (truncate, "cannot be read (OSError: Expected to be able to read"),
    (delete_record, f"has no {TOKEN_RECORD_FILE} digest record"),
    (swap_splits, "does not match its digest record (train, val tokens differ)"),
    (swap_tokens_with_another_corpus, "does not match its digest record"),
    (swap_caches_with_another_corpus, "was recorded for other inputs"),
    (corrupt_record, "cannot be read (JSONDecodeError"),
]
"""Each leaves a cache under the right key that does not hold what the manifest's inputs produce."""


@pytest.mark.parametrize(("tamper", "reason"), TAMPERING, ids=[t.__name__ for t, _ in TAMPERING])
def test_a_tampered_token_cache_is_detected_and_rebuilt(
    tamper: Callable[[Path, Path], None], reason: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    clean = corpus(tmp_path / "cache")
    clean_manifest = clean.prepare()
    shouted = tmp_path / "shouted.txt"
    shouted.write_text(CORPUS.read_text().upper())
    other = corpus(tmp_path / "cache", files=str(shouted))
    capsys.readouterr()
    tamper(cache_of(clean), cache_of(other))

    reloaded = corpus(tmp_path / "cache")
    manifest = reloaded.prepare()
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("lit_psion: warning: token cache "), warnings
    assert reason in warnings[0] and warnings[0].endswith("; rebuilding it from the sources")
    assert manifest.digest == clean_manifest.digest
    for split in ("train", "val"):
        assert torch.equal(reloaded._splits[split], clean._splits[split])

    corpus(tmp_path / "cache").prepare()  # the rebuilt cache is whole again: no second warning
    assert capsys.readouterr().err == ""


def test_an_intact_token_cache_is_reused_without_a_word(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = corpus(tmp_path / "cache")
    first.prepare()
    capsys.readouterr()
    arrow = cache_of(first) / TOKENS_FILE
    written = arrow.stat().st_mtime_ns
    assert corpus(tmp_path / "cache").prepare().digest == first.manifest.digest
    assert capsys.readouterr().err == "" and arrow.stat().st_mtime_ns == written


def test_the_manifest_digest_commits_to_the_tokens(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A cache rewritten together with its record past what a load spot-checks is self-consistent, so it is used:
    # what it holds is then what the manifest says, and the data manifest digest (run.json, checkpoints,
    # receipts) is not the clean one, so a resume of a run that trained on the clean tokens refuses it.
    clean = corpus(tmp_path / "cache")
    clean_manifest = clean.prepare()
    cache = cache_of(clean)
    rewrite_the_tail_and_record(cache, cache)
    digests = read_json(cache / TOKEN_RECORD_FILE)["token_digests"]
    capsys.readouterr()

    forged = corpus(tmp_path / "cache")
    manifest = forged.prepare()
    assert capsys.readouterr().err == ""
    assert not torch.equal(forged._splits["train"], clean._splits["train"])
    assert manifest.token_counts == clean_manifest.token_counts
    assert manifest.inputs_digest() == clean_manifest.inputs_digest()
    assert manifest.token_digests == digests != clean_manifest.token_digests
    assert manifest.digest != clean_manifest.digest
    assert clean_manifest.describe_change(manifest).startswith("token content changed (")


def test_token_digests_are_of_the_packed_little_endian_stream(tmp_path: Path) -> None:
    data = corpus(tmp_path / "cache")
    manifest = data.prepare()
    for split, tokens in data._splits.items():
        expected = hashlib.sha256(tokens.numpy().astype("<i4").tobytes()).hexdigest()
        assert manifest.token_digests[split] == expected


# -- sources must be UTF-8 text -----------------------------------------------------------------

TEXT = "A line of text, with \u00e9 and \u4e2d.\n\nA second paragraph.\n".encode() * 40
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
NOT_TEXT = [
    ("invalid-byte-at-start", b"\xff" + TEXT, 0, "byte 0xff, not UTF-8"),
    ("invalid-byte-in-the-middle", TEXT[:500] + b"\xc3\x28" + TEXT[500:], 500, "byte 0xc3, not UTF-8"),
    ("cut-sequence-at-the-end", TEXT + b"\xe2\x82", len(TEXT), "byte 0xe2, not UTF-8"),
    ("lone-continuation-byte", TEXT[:7] + b"\x80" + TEXT[7:], 7, "byte 0x80, not UTF-8"),
    ("binary-image", PNG, 0, "byte 0x89, not UTF-8"),
    ("binary-with-ascii-and-nul", b"ELF header text" + b"\x00" * 8 + TEXT, 15, "a NUL byte (a binary file)"),
    ("nul-before-an-invalid-byte", TEXT[:20] + b"\x00" + TEXT[20:90] + b"\xff", 20, "a NUL byte"),
]


@pytest.mark.parametrize(("content", "offset", "kind"), [c[1:] for c in NOT_TEXT], ids=[c[0] for c in NOT_TEXT])
def test_a_source_that_is_not_utf8_text_is_refused_naming_file_and_offset(
    tmp_path: Path, content: bytes, offset: int, kind: str
) -> None:
    good, bad = tmp_path / "good.txt", tmp_path / "bad.bin"
    good.write_bytes(TEXT)
    bad.write_bytes(content)
    with pytest.raises(DataError) as raised:
        corpus(tmp_path / "cache", files=[str(good), str(bad)]).prepare()
    message = str(raised.value)
    assert "\n" not in message and not isinstance(raised.value, DataConfigError)
    assert message.startswith(f"data file {str(bad)!r} is not UTF-8 text: {kind}")
    assert f"at byte offset {offset};" in message and "exclude it from --data.files" in message


def test_utf8_text_with_a_bom_and_multibyte_characters_is_accepted(tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_bytes(b"\xef\xbb\xbf" + TEXT)
    data = corpus(tmp_path / "cache", files=str(text), block_size=8)
    data.prepare()
    assert "\u4e2d" in data.tokenizer.get_vocab()


# -- max_bytes is exact ---------------------------------------------------------------------------

SIZES = (1000, 2000, 3000)
MAX_BYTES = [
    ("no-cap", None, 3),
    ("cap-is-the-exact-total", 6000, 3),
    ("one-byte-short-of-the-total", 5999, 2),
    ("cap-is-exactly-two-files", 3000, 2),
    ("cap-is-exactly-the-first-file", 1000, 1),
    ("a-later-file-never-jumps-the-queue", 1999, 1),
]


@pytest.fixture
def sized_files(tmp_path: Path) -> list[str]:
    files = []
    for i, size in enumerate(SIZES):
        path = tmp_path / f"part{i}.txt"
        line = f"file {i} says hello.\n\n".encode()
        path.write_bytes((line * (size // len(line) + 1))[:size])
        files.append(str(path))
    return files


@pytest.mark.parametrize(("max_bytes", "taken"), [c[1:] for c in MAX_BYTES], ids=[c[0] for c in MAX_BYTES])
def test_max_bytes_takes_whole_files_in_order_within_the_cap(
    tmp_path: Path, sized_files: list[str], max_bytes: int | None, taken: int
) -> None:
    sources, _ = corpus(tmp_path / "cache", files=sized_files, max_bytes=max_bytes)._read_sources()
    assert [s.path for s in sources] == sized_files[:taken]
    assert [s.bytes for s in sources] == list(SIZES[:taken])
    assert max_bytes is None or sum(s.bytes for s in sources) <= max_bytes


@pytest.mark.parametrize("max_bytes", [1, 999])
def test_a_first_file_larger_than_max_bytes_is_refused(tmp_path: Path, sized_files: list[str], max_bytes: int) -> None:
    with pytest.raises(
        DataError, match=rf"data file '.*part0.txt' alone is 1000 bytes, over max_bytes {max_bytes};"
    ) as e:
        corpus(tmp_path / "cache", files=sized_files, max_bytes=max_bytes).prepare()
    assert not isinstance(e.value, DataConfigError) and "raise --data.max_bytes" in str(e.value)


# -- a resume against changed data is the exit-3 manifest refusal, end to end ---------------------


def _add_a_new_character(text: Path, cache: Path) -> None:
    text.write_text(text.read_text() + "\n\nThe keeper signs \u00a7 7 of the ledger.\n")


def _add_text_in_the_same_alphabet(text: Path, cache: Path) -> None:
    text.write_text(text.read_text() + "\n\n" + CORPUS.read_text().split("\n\n")[0] + "\n")


def _rewrite_the_token_cache_and_its_record(text: Path, cache: Path) -> None:
    (entry,) = (cache / "corpora").iterdir()
    rewrite_the_tail_and_record(entry, entry)  # past the spot-check (a rewrite it sees is rebuilt instead)


RESUME_REFUSALS = [
    (_add_a_new_character, "files changed: "),  # the vocabulary grows: the model would not even load
    (_add_text_in_the_same_alphabet, "files changed: "),
    (_rewrite_the_token_cache_and_its_record, "token content changed ("),
]


@pytest.mark.parametrize(("change", "named"), RESUME_REFUSALS, ids=[c.__name__.strip("_") for c, _ in RESUME_REFUSALS])
def test_resuming_against_changed_data_exits_3_naming_the_change(
    change: Callable[[Path, Path], None], named: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    text, cache = tmp_path / "corpus.txt", tmp_path / "cache"
    shutil.copy(CORPUS, text)
    common = ("--data.files", str(text), "--data.cache_dir", str(cache), "--trainer.default_root_dir", str(tmp_path))
    assert fit(*common, "--trainer.max_steps", "3") == 0
    change(text, cache)
    capsys.readouterr()
    assert fit(*common, "--trainer.max_steps", "6", "--ckpt_path", "last") == 3
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("lit_psion:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    assert errors[0].startswith("lit_psion: error: refusing to load the checkpoint: the data manifest changed")
    assert named in errors[0] and "size mismatch" not in errors[0]


def test_resuming_over_a_damaged_token_cache_rebuilds_it_and_continues(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    common = ("--data.cache_dir", str(cache), "--trainer.default_root_dir", str(tmp_path),
              "--model.init_args.optimizer.decay_steps", "6")  # a longer run keeps its schedule: no word on it
    assert fit(*common, "--trainer.max_steps", "3") == 0
    (entry,) = (cache / "corpora").iterdir()
    rewrite_ids(entry, entry)
    capsys.readouterr()
    assert fit(*common, "--trainer.max_steps", "6", "--ckpt_path", "last") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion: warning")]
    assert len(warnings) == 1 and "rebuilding it from the sources" in warnings[0]


def test_a_token_cache_built_under_other_document_rules_is_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache key held only the manifest's inputs: when CR-only text began to be cut into paragraphs, a cache
    built before went on serving each such file as one document, under the same key."""
    from lit_psion.core import manifest as manifests

    first = corpus(tmp_path / "cache")
    old_cache = cache_of(first)
    assert (old_cache / TOKEN_RECORD_FILE).is_file()
    monkeypatch.setattr(manifests, "DOCUMENT_RULES_VERSION", manifests.DOCUMENT_RULES_VERSION + 1)
    again = corpus(tmp_path / "cache")
    new_cache = cache_of(again)
    assert new_cache != old_cache and (new_cache / TOKEN_RECORD_FILE).is_file()  # built anew, not read
    assert again.prepare().digest == first.prepare().digest  # the run's pinned data is unchanged


def test_a_resume_refused_for_a_rewritten_cached_tokenizer_names_the_cache_and_the_runs_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The shared cache's tokenizer rewritten with its digest record (two ids swapped): the resume said "restore the
    original data and settings", which were unchanged; the run's own tokenizer.json is the one it trained with."""
    from lit_psion.cli import main
    from lit_psion.core.run import read_latest

    monkeypatch.setenv("LIT_PSION_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "runs"
    common = ["--config", "fixtures/tiny.yaml", "--trainer.default_root_dir", str(root)]
    assert main(["fit", *common, "--trainer.max_steps", "3"]) == 0
    (cached,) = (tmp_path / "cache" / "tokenizers").glob("*/tokenizer.json")
    record = json.loads(cached.read_text())
    vocab = record["model"]["vocab"]
    vocab["a"], vocab["e"] = vocab["e"], vocab["a"]
    cached.write_text(json.dumps(record))
    cached.with_name("tokenizer.sha256").write_text(hashlib.sha256(cached.read_bytes()).hexdigest() + "\n")
    run = root / read_latest(root)
    capsys.readouterr()
    assert main(["fit", *common, "--trainer.max_steps", "5", "--ckpt_path", "last"]) == 3
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion: error:")]
    assert f"the tokenizer cached in {str(cached.parent)!r} is not the one it trained with" in line, line
    assert f"give --data.tokenizer_file {run / 'tokenizer.json'}" in line and "restore the original" not in line
    assert main(["fit", *common, "--trainer.max_steps", "5", "--ckpt_path", "last", "--data.tokenizer_file",
                 str(run / "tokenizer.json")]) == 0  # fmt: skip  (the fix it names works)


@pytest.mark.parametrize(("given", "named"), [
    (["--data.vocab_size", "300"], "this fit asks for --data.tokenizer bpe --data.vocab_size 300"),
    (["--data.tokenizer", "char"], "this fit asks for --data.tokenizer char:"),
], ids=["another vocabulary size", "another kind"])  # fmt: skip
def test_a_resume_with_another_tokenizer_setting_names_the_setting_not_the_cache(
    given: list[str], named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The data manifest records the tokenizer's digest, not its kind or size: a resume given another was told the
    shared cache held the wrong tokenizer and to remove the entry, which trained the same wrong one again."""
    from lit_psion.cli import main

    monkeypatch.setenv("LIT_PSION_CACHE", str(tmp_path / "cache"))
    common = ["--config", "fixtures/tiny.yaml", "--trainer.default_root_dir", str(tmp_path / "runs"),
              "--data.tokenizer", "bpe"]  # fmt: skip
    assert main(["fit", *common, "--trainer.max_steps", "3", "--data.vocab_size", "280"]) == 0
    capsys.readouterr()
    assert main(["fit", *common, "--trainer.max_steps", "5", "--ckpt_path", "last", *given]) == 3
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion: error:")]
    assert named in line and "give --data.tokenizer bpe --data.vocab_size 280 to continue it" in line, line
    assert "cache" not in line, line
    assert main(["fit", *common, "--trainer.max_steps", "5", "--ckpt_path", "last", "--data.vocab_size", "280"]) == 0


def test_a_vocabulary_size_a_char_tokenizer_ignores_is_not_a_changed_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A char run resumed with --data.vocab_size 999 was warned "not the run an uninterrupted fit would give" and
    receipted the change, yet trained bitwise as the uninterrupted run: the size means nothing to a char tokenizer
    (and a BPE size that changes the tokenizer is refused through the data manifest)."""
    from lit_psion.cli import main
    from lit_psion.core.run import read_latest

    monkeypatch.setenv("LIT_PSION_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "runs"
    common = ["--config", "fixtures/tiny.yaml", "--trainer.default_root_dir", str(root)]
    assert main(["fit", *common, "--trainer.max_steps", "3"]) == 0
    capsys.readouterr()
    assert main(["fit", *common, "--trainer.max_steps", "5", "--ckpt_path", "last", "--data.vocab_size", "999"]) == 0
    assert "had otherwise" not in capsys.readouterr().err
    receipts = [json.loads(line) for line in (root / read_latest(root) / "receipts.jsonl").read_text().splitlines()]
    resumed = next(r["body"] for r in receipts if r["body"].get("event") == "resumed")
    assert [key for key, *_ in resumed["changed_settings"]] == ["trainer.max_steps"]


def test_a_resume_refused_for_an_altered_token_cache_names_the_cache_to_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The shared token cache rewritten past what a load spot-checks, with its record: the resume said "restore the
    original data and settings", which were unchanged, and named no cache; removing the entry is the fix."""
    from lit_psion.cli import main

    monkeypatch.setenv("LIT_PSION_CACHE", str(tmp_path / "cache"))
    common = ["--config", "fixtures/tiny.yaml", "--trainer.default_root_dir", str(tmp_path / "runs")]
    assert main(["fit", *common, "--trainer.max_steps", "3"]) == 0
    (cache,) = (tmp_path / "cache" / "corpora").iterdir()
    rewrite_the_tail_and_record(cache, cache)
    capsys.readouterr()
    assert main(["fit", *common, "--trainer.max_steps", "5", "--ckpt_path", "last"]) == 3
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion: error:")]
    assert f"the token cache {str(cache)!r} gives other tokens" in line and "remove it" in line, line
    shutil.rmtree(cache)
    assert main(["fit", *common, "--trainer.max_steps", "5", "--ckpt_path", "last"]) == 0
