"""The replay-safe corpus: manifests pinned by digest, a document-level split, a resumable order."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lit_psion.core.errors import DataError
from lit_psion.core.manifest import DataManifest
from lit_psion.datamodules import CorpusDataModule, Cursor, DataConfigError, DataManifestMismatch
from lit_psion.datamodules.replay import ReplayBatchSampler, ReplaySampler, epoch_order

CORPUS = Path("fixtures/tiny_corpus.txt")


def corpus(tmp_path: Path, cache: str = "cache", **kwargs: object) -> CorpusDataModule:
    settings = {"files": str(CORPUS), "tokenizer": "char", "block_size": 32, "batch_size": 4, **kwargs}
    return CorpusDataModule(cache_dir=str(tmp_path / cache), **settings)


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_manifest_digest_is_stable_across_fresh_builds(tmp_path: Path, tokenizer: str) -> None:
    first = corpus(tmp_path, "cache-a", tokenizer=tokenizer, vocab_size=300).prepare()
    second = corpus(tmp_path, "cache-b", tokenizer=tokenizer, vocab_size=300).prepare()
    assert first.digest == second.digest
    assert first.token_counts["train"] > 0 and first.token_counts["val"] > 0


def test_manifest_digest_changes_when_one_source_byte_changes(tmp_path: Path) -> None:
    copy = tmp_path / "text.txt"
    shutil.copy(CORPUS, copy)
    before = corpus(tmp_path, files=str(copy)).prepare()
    data = bytearray(copy.read_bytes())
    data[100] = ord("Z") if data[100] != ord("Z") else ord("Y")
    copy.write_bytes(bytes(data))
    after = corpus(tmp_path, files=str(copy)).prepare()
    assert before.digest != after.digest
    assert f"files changed: {copy}" in before.describe_change(after)


def test_a_file_given_under_another_spelling_is_named_so(tmp_path: Path) -> None:
    """The same bytes under another name (./text.txt for text.txt, a moved file) are no new data: the refusal says
    which name to give instead of listing a removed and an added file."""
    text = tmp_path / "text.txt"
    shutil.copy(CORPUS, text)
    before = corpus(tmp_path, files=str(text)).prepare()
    moved = tmp_path / "moved.txt"
    shutil.copy(CORPUS, moved)
    after = corpus(tmp_path, files=str(moved)).prepare()
    said = before.describe_change(after)
    assert said.startswith(f"files named otherwise: {str(moved)!r} holds what {str(text)!r} held (give {str(text)!r})")
    assert "files removed" not in said and "files added" not in said


def test_the_same_files_in_another_order_are_said_as_such(tmp_path: Path) -> None:
    """A reordered --data.files was refused as "token content changed" and counts, with no word of the order."""
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    paragraphs = CORPUS.read_text().split("\n\n")
    first.write_text("\n\n".join(paragraphs[: len(paragraphs) // 2]))
    second.write_text("\n\n".join(paragraphs[len(paragraphs) // 2 :]))
    before = corpus(tmp_path, files=[str(first), str(second)]).prepare()
    after = corpus(tmp_path, files=[str(second), str(first)]).prepare()
    said = before.describe_change(after)
    assert said.startswith(f"files in another order (the run read them as {str(first)!r}, {str(second)!r}: give "
                           "them in that order)"), said


def test_a_change_of_tokenizer_is_said_briefly(tmp_path: Path) -> None:
    """Another tokenizer was said with both 64-hex digests and every split's counts whole: 600+ characters."""
    before = corpus(tmp_path).prepare()
    after = dataclasses.replace(before, tokenizer_digest="f" * 64, token_digests={"train": "0" * 64, "val": "1" * 64},
                                token_counts={**before.token_counts, "train": before.token_counts["train"] + 1})
    said = before.describe_change(after)
    assert f"tokenizer_digest: '{before.tokenizer_digest[:16]}...' -> '{'f' * 16}...'" in said
    assert f"token_counts: {{'train': {before.token_counts['train']}}} -> " in said and len(said) < 250, said


def test_manifest_json_round_trip(tmp_path: Path) -> None:
    manifest = corpus(tmp_path).prepare()
    assert DataManifest.from_json_dict({**manifest.to_json_dict(), "digest": "x"}).digest == manifest.digest


@pytest.mark.parametrize("split", ["hash", "tail"])
@pytest.mark.parametrize("documents", ["paragraph", "file"])
@pytest.mark.parametrize(("n_docs", "test_fraction"), [(12, 0.0), (12, 0.2), (3, 0.05), (40, 0.3)])
def test_train_validation_and_test_never_share_a_document(tmp_path: Path, split: str, documents: str, n_docs: int,
                                                          test_fraction: float) -> None:  # fmt: skip
    files = [tmp_path / f"doc{i}.txt" for i in range(n_docs)]
    for i, path in enumerate(files):
        path.write_text(f"document {i}\n\n" + "words and more words\n" * (i + 3))
    data = corpus(tmp_path, files=[str(p) for p in files], split=split, documents=documents, block_size=8,
                  test_fraction=test_fraction)  # fmt: skip
    _, texts = data._read_sources()
    _, docs = data._documents(texts)
    assigned = data._split_documents(docs)
    keys = {name: {key for (key, _, _), split_ in zip(docs, assigned, strict=True) if split_ == name}
            for name in ("train", "val", "test")}  # fmt: skip
    assert set(assigned) == ({"train", "val", "test"} if test_fraction else {"train", "val"})
    assert sum(map(len, keys.values())) == len(docs) == len(set().union(*keys.values()))  # a partition
    if split == "tail" and test_fraction:  # the test documents are the last ones, validation's just before
        last = [split_ for split_ in assigned if split_ != "train"]
        assert assigned[-1] == "test" and last == sorted(last, key=("val", "test").index)
    if split == "hash" and test_fraction:  # validation is the same with or without a test split...
        plain = corpus(tmp_path, files=[str(p) for p in files], split=split, documents=documents, block_size=8)
        val_without = [i for i, x in enumerate(plain._split_documents(docs)) if x == "val"]
        if n_docs >= 12 and len(val_without) >= 2:  # ...when the hash gave it (not a small-corpus fallback)
            assert [i for i, x in enumerate(assigned) if x == "val"] == val_without


@pytest.mark.parametrize("split", ["hash", "tail"])
@pytest.mark.parametrize(("n_docs", "val_fraction", "test_fraction"),
                         [(3, 0.1, 0.4), (4, 0.1, 0.8), (3, 0.9, 0.05), (5, 0.5, 0.45), (20, 0.1, 0.02)])  # fmt: skip
def test_every_split_keeps_a_document_whatever_the_fractions(
    tmp_path: Path, split: str, n_docs: int, val_fraction: float, test_fraction: float
) -> None:
    files = [tmp_path / f"doc{i}.txt" for i in range(n_docs)]
    for i, path in enumerate(files):
        path.write_text(f"document {i}: " + "words " * 20)
    data = corpus(tmp_path, files=[str(p) for p in files], split=split, documents="file", block_size=8,
                  val_fraction=val_fraction, test_fraction=test_fraction)  # fmt: skip
    _, texts = data._read_sources()
    assert set(data._split_documents(data._documents(texts)[1])) == {"train", "val", "test"}


def test_a_test_split_is_held_out_and_served_by_test_alone(tmp_path: Path) -> None:
    without = corpus(tmp_path, documents="paragraph")
    manifest = without.prepare()
    assert "test_fraction" not in manifest.to_json_dict() and not without.has_test_split()
    with pytest.raises(DataConfigError, match=r"has no test split: .*--data.test_fraction 0\.1"):
        without.test_dataloader()
    data = corpus(tmp_path, documents="paragraph", test_fraction=0.2)
    held = data.prepare()
    assert held.digest != manifest.digest and held.to_json_dict()["test_fraction"] == 0.2
    assert set(held.token_digests) == {"train", "val", "test"} and data.has_test_split()
    assert held.token_counts["train"] < manifest.token_counts["train"]  # the test documents left training
    assert held.token_counts["val"] + held.token_counts["test"] > manifest.token_counts["val"]
    served = torch.cat([batch["input_ids"] for batch in data.test_dataloader()])
    test, val = data.samples("test"), data.samples("val")
    assert torch.equal(served, test[list(range(len(test)))]["input_ids"])  # every test window once, in order
    assert not torch.equal(served[:1], val[[0]]["input_ids"])
    again = corpus(tmp_path, documents="paragraph", test_fraction=0.2)  # the token cache, read back
    assert again.prepare().digest == held.digest and torch.equal(again.samples("test")[[0]]["input_ids"],
                                                                  data.samples("test")[[0]]["input_ids"])  # fmt: skip


def test_stdlib_source_is_sorted_and_capped(tmp_path: Path) -> None:
    data = corpus(tmp_path, files="stdlib", max_bytes=200_000)
    sources, _ = data._read_sources()
    names = [s.path for s in sources]
    assert names == sorted(names) and all(n.startswith("stdlib/") and n.endswith(".py") for n in names)
    assert sum(s.bytes for s in sources) <= 200_000
    assert Path(sysconfig.get_paths()["stdlib"], names[0].removeprefix("stdlib/")).is_file()


def test_order_is_a_pure_function_of_seed_and_epoch() -> None:
    assert torch.equal(epoch_order(100, 5, 2), epoch_order(100, 5, 2))
    assert not torch.equal(epoch_order(100, 5, 2), epoch_order(100, 5, 3))
    assert sorted(epoch_order(100, 5, 2).tolist()) == list(range(100))


def test_batches_resume_from_a_cursor_without_rereading() -> None:
    whole = list(ReplayBatchSampler(ReplaySampler(40, seed=1), batch_size=4))
    assert whole[3].cursor == Cursor(epoch=0, position=16)
    rest = list(ReplayBatchSampler(ReplaySampler(40, seed=1, cursor=whole[3].cursor), batch_size=4))
    assert rest == whole[4:]
    assert rest[-1].cursor == Cursor(epoch=0, position=40)


def test_sampler_starts_other_epochs_from_zero() -> None:
    sampler = ReplaySampler(40, seed=1, cursor=Cursor(epoch=0, position=20))
    sampler.set_epoch(1)
    assert list(sampler) == epoch_order(40, 1, 1).tolist()


def test_resume_against_a_changed_manifest_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "text.txt"
    shutil.copy(CORPUS, copy)
    old = corpus(tmp_path, files=str(copy))
    old.prepare()
    state = old.state_dict()
    copy.write_text(copy.read_text() + "\n\nOne more paragraph at the end.\n")
    with pytest.raises(DataManifestMismatch, match=r"manifest changed since it was written .*files changed"):
        corpus(tmp_path, files=str(copy)).load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 1.5}, "val_fraction must be in"),
        ({"test_fraction": -0.1}, "test_fraction must be >= 0 and below 1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "test_fraction must leave training documents"),
        ({"val_fraction": 0.7, "test_fraction": 0.3}, "test_fraction must leave training documents"),
        ({"test_fraction": 1.5}, "test_fraction must be >= 0 and below 1"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"split": "random"}, "split must be one of hash, tail, got 'random'"),
        ({"documents": "line"}, "documents must be one of auto, file, paragraph, got 'line'"),
        ({"tokenizer": "wordpiece"}, "tokenizer must be one of bpe, char, got 'wordpiece'"),
        ({"max_bytes": 0}, "max_bytes must be positive or null, got 0"),
    ],
)
def test_bad_settings_are_named_before_any_data_is_read(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(DataConfigError, match=message):
        corpus(tmp_path, **kwargs)


def test_every_bad_setting_is_named_in_one_error(tmp_path: Path) -> None:
    with pytest.raises(DataConfigError, match=r"block_size must .*vocab_size must .*val_fraction must"):
        corpus(tmp_path, block_size=0, vocab_size=-1, val_fraction=0.0)


def test_a_zero_sample_stride_is_refused_not_read_as_the_default(tmp_path: Path) -> None:
    with pytest.raises(DataConfigError, match="sample_stride must"):  # it silently became block_size
        corpus(tmp_path, sample_stride=0)


def test_a_bad_block_size_is_not_also_blamed_on_the_stride_it_defaults(tmp_path: Path) -> None:
    """`--data.block_size 0` also said "data.sample_stride must be a positive integer, got 0": a setting not given."""
    with pytest.raises(DataConfigError) as refused:
        corpus(tmp_path, block_size=0)
    assert "block_size must be a positive integer, got 0" in str(refused.value)
    assert "sample_stride" not in str(refused.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"files": "fixtures/does-not-exist.txt"}, "data file not found: 'fixtures/does-not-exist.txt'"),
        ({"files": "fixtures/*.nothing"}, "data glob matched no files"),
        ({"block_size": 100_000}, "block_size 100000 needs at least 100001 tokens"),
        ({"batch_size": 10_000}, "batch_size 10000 is larger than the .* training samples"),
        ({"tokenizer_file": "nowhere/tokenizer.json"}, "tokenizer file 'nowhere/tokenizer.json' not found"),
        ({"tokenizer_file": "fixtures"}, "tokenizer file 'fixtures' is a directory"),
    ],
)
def test_bad_data_is_named(tmp_path: Path, kwargs: dict, message: str) -> None:
    data = corpus(tmp_path, **kwargs)
    with pytest.raises(DataError, match=message) as raised:
        data.prepare()
    assert not isinstance(raised.value, DataConfigError)


def test_empty_corpus_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="corpus is empty"):
        corpus(tmp_path, files=str(empty)).prepare()


def test_worker_processes_keep_the_batch_cursor(tmp_path: Path) -> None:
    in_process, with_worker = corpus(tmp_path), corpus(tmp_path, num_workers=1)
    in_process.setup("fit")
    with_worker.setup("fit")
    expected, batch = next(iter(in_process.train_dataloader())), next(iter(with_worker.train_dataloader()))
    assert batch["cursor"] == expected["cursor"] == (0, 4)
    assert torch.equal(batch["sample_ids"], expected["sample_ids"])


def test_validation_covers_every_window_including_a_partial_batch(tmp_path: Path) -> None:
    data = corpus(tmp_path, batch_size=5)
    data.setup("validate")
    seen = [i for batch in data.val_dataloader() for i in batch["sample_ids"].tolist()]
    assert seen == list(range(data.manifest.sample_counts["val"])) and len(seen) % 5


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b"\xff\xfe" + b, lambda b: b"[1, 2]"],
    ids=["cut short", "empty", "not utf-8", "json but no tokenizer"],
)
def test_an_unreadable_tokenizer_cache_entry_is_trained_again(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage
) -> None:
    """A cache entry is only a cache: one that cannot be read is rebuilt (the same tokenizer), not exit 1. The
    entry is kept aside, not overwritten: another environment's newer `tokenizers` may have written it."""
    from lit_psion.datamodules.tokenizer import cached_tokenizer

    texts = ["To be, or not to be: that is the question.", "Whether 'tis nobler in the mind"]
    tokenizer, digest = cached_tokenizer(tmp_path, "bpe", 300, {"files": "t"}, iter(texts))
    (entry,) = (tmp_path / "tokenizers").glob("*/tokenizer.json")
    good = entry.read_bytes()
    entry.write_bytes(damage(good))
    again, digest_again = cached_tokenizer(tmp_path, "bpe", 300, {"files": "t"}, iter(texts))
    assert f"the cached tokenizer {entry} is unreadable" in capsys.readouterr().err
    assert (digest_again, entry.read_bytes()) == (digest, good)
    (kept,) = entry.parent.glob("tokenizer.json.unreadable-*")
    assert kept.read_bytes() == damage(good), "kept, not overwritten"
    assert again.encode(texts[0]).ids == tokenizer.encode(texts[0]).ids


def _swap_two_ids(tokenizer_json: str) -> str:
    """The tokenizer with two tokens' ids swapped: it loads, and encodes the same text as other ids."""
    spec = json.loads(tokenizer_json)
    vocab = spec["model"]["vocab"]
    first, second = list(vocab)[-2:]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    return json.dumps(spec)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda entry: entry.write_text(_swap_two_ids(entry.read_text())), "altered"),  # still loads
        (lambda entry: entry.with_name("tokenizer.sha256").unlink(), "unrecorded"),  # an older cache's entry
        (lambda entry: entry.with_name("tokenizer.sha256").write_text("0" * 64), "altered"),
        (lambda entry: entry.with_name("tokenizer.sha256").write_text("not a digest"), "unrecorded"),
    ],
    ids=["a token renamed", "no record", "another record", "a garbled record"],
)
def test_a_cached_tokenizer_that_loads_but_is_not_the_one_trained_is_trained_again(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage, problem: str
) -> None:
    """The cache is shared by every run on the machine: an entry edited in place (a token's string swapped) still
    loads, and a new run would have trained on other ids, its manifest recording the edited tokenizer's digest."""
    from lit_psion.datamodules.tokenizer import cached_tokenizer

    texts = ["To be, or not to be: that is the question.", "Whether 'tis nobler in the mind to suffer"]
    _, digest = cached_tokenizer(tmp_path, "bpe", 300, {"files": "t"}, iter(texts))
    (entry,) = (tmp_path / "tokenizers").glob("*/tokenizer.json")
    good = entry.read_bytes()
    damage(entry)
    assert cached_tokenizer(tmp_path, "bpe", 300, {"files": "t"}, iter(texts))[1] == digest
    assert f"the cached tokenizer {entry} is {problem} (" in capsys.readouterr().err
    assert entry.read_bytes() == good and len(list(entry.parent.glob(f"tokenizer.json.{problem}-*"))) == 1
    assert cached_tokenizer(tmp_path, "bpe", 300, {"files": "t"}, iter(texts))[1] == digest
    assert capsys.readouterr().err == "", "the entry trained again is trusted"


@pytest.mark.parametrize(
    ("documents", "hint"),
    [("file", "add files, or use --data.documents paragraph)"),
     ("paragraph", "add text: documents are split at blank lines, and it has too few)"),
     ("auto", "add text: documents are split at blank lines, and it has too few)")],
)  # fmt: skip
def test_too_few_documents_to_split_get_the_hint_of_the_mode_in_use(tmp_path: Path, documents: str, hint: str) -> None:
    """One file of one paragraph: advising paragraph mode when it is already in use (auto with < 10 files) misled."""
    text = tmp_path / "one.txt"
    text.write_text("a single paragraph of text, with no blank line in it at all\n" * 40)
    with pytest.raises(DataError, match=r"corpus has 1 document\(s\)") as raised:
        corpus(tmp_path, files=str(text), documents=documents).prepare()
    assert str(raised.value).endswith(hint)


def _named_twice(tmp_path: Path) -> dict:
    shutil.copy(CORPUS, tmp_path / "copy.txt")
    return {"files": [str(CORPUS), str(tmp_path / "copy.txt")]}


def _linked(tmp_path: Path) -> dict:
    (tmp_path / "link.txt").symlink_to(CORPUS.resolve())
    return {"files": [str(CORPUS), str(tmp_path / "link.txt")]}


def _overlapping(tmp_path: Path) -> dict:
    glob_over = _glob_over(tmp_path, lambda path: path.write_text("other text\n\nand more of it\n"))["files"]
    return {"files": [str(tmp_path / "texts" / "." / "a.txt"), glob_over]}


def _looped(tmp_path: Path) -> dict:
    """One recursive glob over a directory holding a link to its parent: the glob finds the file twice."""
    (tmp_path / "lp" / "sub").mkdir(parents=True)
    shutil.copy(CORPUS, tmp_path / "lp" / "sub" / "a.txt")
    (tmp_path / "lp" / "sub" / "up").symlink_to("..")
    return {"files": str(tmp_path / "lp" / "**" / "*.txt")}


def _unreadable(tmp_path: Path) -> dict:
    return {"files": [str(CORPUS), "/proc/sys/vm/compact_memory"]}  # write-only, even for root


def _glob_over(tmp_path: Path, make: Callable[[Path], None]) -> dict:
    texts = tmp_path / "texts"
    texts.mkdir()
    shutil.copy(CORPUS, texts / "a.txt")
    make(texts / "b.txt")
    return {"files": str(texts / "*.txt")}


@pytest.mark.parametrize(("make", "message"), [
    (_named_twice, "hold the same text .*a copy puts validation text in training"),
    (lambda tmp: _glob_over(tmp, lambda path: shutil.copy(CORPUS, path)), "'.*/a.txt' and '.*/b.txt' hold the same"),
    (_linked, "is given twice \\('.*' and '.*/link.txt' are one file"),
    (_overlapping, "'.*/texts/a.txt' is given twice \\('.*/texts/a.txt' and '.*/texts/a.txt' are one file"),
    (_looped, "are one file, through --data.files entries that overlap or a link a glob followed\\); give each file "
              "once \\(narrow the glob, or move the link out of its way\\)"),  # named no link: one entry cannot overlap
    (_unreadable, "data file '/proc/sys/vm/compact_memory' cannot be read \\(Permission denied\\)"),
    (lambda tmp: _glob_over(tmp, lambda path: path.symlink_to(path.with_name("gone.txt"))),
     "matched '.*/b.txt', a broken symlink"),
    (lambda tmp: _glob_over(tmp, lambda path: os.mkfifo(path)), "matched '.*/b.txt', not a regular file"),
    (lambda tmp: _glob_over(tmp, lambda path: shutil.copy(CORPUS, os.fsdecode(bytes(path.parent) + b"/\xff.txt"))),
     "data file b'.*/\\\\xff.txt' has a name that is not UTF-8, which its manifest cannot record"),
    (lambda tmp: {"files": str(_glob_over(tmp, lambda path: path.mkdir())["files"]).replace("*.txt", "b*")},
     "data glob matched no files: '.*/b\\*'"),
])  # fmt: skip
def test_a_text_named_twice_a_file_that_cannot_be_read_or_a_glob_over_what_is_not_a_file_is_named(
    tmp_path: Path, make: Callable, message: str
) -> None:
    """The same text under two names landed in both splits (every validation window was in training); an
    unreadable file was exit 1 (a PermissionError inside a Lightning link); a glob passed over a broken symlink or
    a FIFO in silence (named, either is refused)."""
    if make is _unreadable and not Path("/proc/sys/vm/compact_memory").exists():
        pytest.skip("needs /proc/sys/vm/compact_memory (a file no one can read)")
    with pytest.raises(DataError, match=message):
        corpus(tmp_path, **make(tmp_path)).prepare()


def test_a_file_name_with_glob_characters_crlf_paragraphs_and_named_files_max_bytes_leaves_out(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    text = CORPUS.read_text()
    bracketed = tmp_path / "notes[1].txt"
    bracketed.write_text(text)
    assert corpus(tmp_path, files=str(bracketed)).prepare().sources[0].path == str(bracketed)
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(text.replace("\n", "\r\n").encode())
    lf, windows = corpus(tmp_path, "c1", documents="paragraph"), corpus(tmp_path, "c2", files=str(crlf),
                                                                          documents="paragraph")  # fmt: skip
    lf.prepare()
    windows.prepare()
    assert len(windows._documents([("c", crlf.read_bytes().decode())])[1]) == len(lf._documents([("c", text)])[1]) > 1
    old_mac = text.replace("\n", "\r")  # CR-only line ends were one paragraph a file
    assert len(windows._documents([("c", old_mac)])[1]) == len(lf._documents([("c", text)])[1])
    other = tmp_path / "other.txt"
    other.write_text(text[: len(text) // 2])
    corpus(tmp_path, "c3", files=[str(CORPUS), str(other)], max_bytes=len(text.encode()) + 10).prepare()
    assert f"leaves out 1 data file(s) given by name ('{other}')" in capsys.readouterr().err


def test_text_a_given_tokenizer_mostly_cannot_read_is_warned_about(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Evaluated with a run's tokenizer, text in another alphabet was read as the unknown token, and a perplexity of
    it printed without a word."""
    own = corpus(tmp_path, "cache-own")
    own.prepare()
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text(own.tokenizer_json() or "")
    capsys.readouterr()
    corpus(tmp_path, "cache-same", tokenizer_file=str(tokenizer)).prepare()  # its own text: nothing to say
    assert "unknown to" not in capsys.readouterr().err
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("\n\n".join(["ééé ààà ùùù €€€ ÿÿÿ ôôô ¿¿¿ ¡¡¡ ßßß ñññ ııı øøø"] * 40))
    corpus(tmp_path, "cache-foreign", files=str(foreign), tokenizer_file=str(tokenizer)).prepare()
    assert f"of the data's tokens are unknown to {str(tokenizer)!r}" in capsys.readouterr().err


@pytest.mark.parametrize("replace", ["a directory", "a dangling link"])
def test_a_tokenizer_cache_entry_that_is_not_a_file_is_set_aside_and_trained_again(
    tmp_path: Path, capsys: pytest.CaptureFixture, replace: str
) -> None:
    """A directory in the entry's place was read as no entry, trained again, and then written over: exit 1 ("Is a
    directory", from the rename onto it), in every fit and `events predict` using the cache."""
    from lit_psion.datamodules.tokenizer import cached_tokenizer

    texts = ["To be, or not to be: that is the question.", "Whether 'tis nobler in the mind"]
    _, digest = cached_tokenizer(tmp_path, "bpe", 300, {"files": "t"}, iter(texts))
    (entry,) = (tmp_path / "tokenizers").glob("*/tokenizer.json")
    good = entry.read_bytes()
    entry.unlink()
    entry.mkdir() if replace == "a directory" else entry.symlink_to(tmp_path / "nowhere")
    _, again = cached_tokenizer(tmp_path, "bpe", 300, {"files": "t"}, iter(texts))
    assert f"the cached tokenizer {entry} is unreadable (not a regular file)" in capsys.readouterr().err
    assert (again, entry.read_bytes()) == (digest, good)
    assert len(list(entry.parent.glob("tokenizer.json.unreadable-*"))) == 1
