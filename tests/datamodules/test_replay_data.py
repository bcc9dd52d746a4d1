"""What ReplayDataModule gives every DataModule, checked as one table over the three of them.

Loaders for fit, validate, test and predict; the cursor stamped on every batch and marked consumed only
for training batches; the loader and manifest state round trips; facts; and the error classes (a bad
setting exits 2, bad data exits 3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from lit_psion.core.contracts import DataFacts, ProbeData, ReplayData, TokenizedData
from lit_psion.core.errors import DataConfigError, DataError, DataManifestMismatch
from lit_psion.datamodules import CorpusDataModule, DynamicsDataModule, EventTraceDataModule, ReplayDataModule

Factory = Callable[..., ReplayDataModule]


def corpus(cache: Path, **overrides: Any) -> CorpusDataModule:
    settings = {"files": "fixtures/tiny_corpus.txt", "tokenizer": "char", "block_size": 32, "batch_size": 4}
    return CorpusDataModule(cache_dir=str(cache), **{**settings, **overrides})


def dynamics(cache: Path, **overrides: Any) -> DynamicsDataModule:
    return DynamicsDataModule(**{"n_train": 4, "n_val": 2, "steps": 40, "window": 8, "batch_size": 5, **overrides})


def events(cache: Path, **overrides: Any) -> EventTraceDataModule:
    settings = {"n_train": 10, "n_val": 3, "n_pairs": 2, "distractor_events": 1, "negotiation_pairs": 1,
                "sleep_replay_per_pair": 0, "vocab_size": 300, "tokenizer_traces": 10, "block_size": 64,
                "batch_size": 4}  # fmt: skip
    return EventTraceDataModule(cache_dir=str(cache), **{**settings, **overrides})


FACTORIES = {"corpus": corpus, "dynamics": dynamics, "events": events}
# name: (facts pinned for the settings above, a setting that changes the manifest)
CASES = {
    "corpus": (DataFacts(vocab_size=32, block_size=32), {"block_size": 16}),
    "dynamics": (DataFacts(state_dim=8, window=8), {"dt": 0.1}),
    "events": (DataFacts(vocab_size=300, block_size=64), {"n_pairs": 3}),
}
each_module = pytest.mark.parametrize("name", FACTORIES)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make(name: str, cache: Path) -> Callable[..., ReplayDataModule]:
    return lambda **overrides: FACTORIES[name](cache, **overrides)


def _prepared(make: Callable[..., ReplayDataModule], **overrides: Any) -> ReplayDataModule:
    data = make(**overrides)
    data.setup("fit")
    return data


def _ids(loader: Any) -> list[int]:
    return [i for batch in loader for i in batch["sample_ids"].tolist()]


@each_module
def test_validate_and_predict_read_the_validation_split_in_order_and_test_needs_its_own(
    make: Callable[..., ReplayDataModule],
) -> None:
    data = _prepared(make)
    val = _ids(data.val_dataloader())
    assert val == list(range(len(data._dataset("val"))))
    assert _ids(data.predict_dataloader()) == val
    with pytest.raises(DataConfigError, match="has no test split"):  # never the validation split in its place
        data.test_dataloader()


TEST_SPLITS = {"corpus": {"test_fraction": 0.2, "documents": "paragraph"}, "dynamics": {"n_test": 3},
               "events": {"n_test": 2}}  # fmt: skip
"""The setting that asks each module for a test split."""


@each_module
def test_a_test_split_is_its_own_held_out_data_and_recorded_in_the_manifest(
    name: str, make: Callable[..., ReplayDataModule]
) -> None:
    without = _prepared(make, **({"documents": "paragraph"} if name == "corpus" else {}))
    data = _prepared(make, **TEST_SPLITS[name])
    assert data.has_test_split() and not without.has_test_split()
    setting = next(iter(TEST_SPLITS[name]))
    assert setting not in without.prepare().to_json_dict()  # no test split: the manifest it always had
    assert data.prepare().to_json_dict()[setting] == TEST_SPLITS[name][setting]
    assert data.prepare().digest != without.prepare().digest
    test, val = data._dataset("test"), data._dataset("val")
    assert _ids(data.test_dataloader()) == list(range(len(test))) and len(test) > 0
    first_test, first_val = test[[0]], val[[0]]
    keys = [k for k in first_test if k != "sample_ids" and isinstance(first_test[k], torch.Tensor)]
    assert keys and any(not torch.equal(first_test[k], first_val[k]) for k in keys)  # other data than validation's


@each_module
def test_every_training_batch_carries_its_cursor_as_a_plain_tuple(make: Callable[..., ReplayDataModule]) -> None:
    data = _prepared(make)
    cursors = [batch["cursor"] for batch in data.train_dataloader()]
    assert cursors == [(0, (i + 1) * data.batch_size) for i in range(len(cursors))]
    assert all(type(c) is tuple and all(type(v) is int for v in c) for c in cursors)
    assert "cursor" not in data._dataset("train")[[0, 1]]  # stamped by the loader alone, not by each dataset


@each_module
def test_only_training_batches_are_marked_consumed(make: Callable[..., ReplayDataModule]) -> None:
    data = _prepared(make)
    loader = data.train_dataloader()
    first, second = list(iter(loader))[:2]
    data.trainer = SimpleNamespace(training=False)  # a validation batch inside fit
    data.on_after_batch_transfer(first, 0)
    assert loader.state_dict() == {"epoch": 0, "position": 0}
    data.trainer = SimpleNamespace(training=True)
    data.on_after_batch_transfer(first, 0)
    data.on_after_batch_transfer(second, 0)
    assert loader.state_dict() == {"epoch": 0, "position": 2 * data.batch_size}


@each_module
def test_loader_state_round_trip_resumes_where_it_stopped(make: Callable[..., ReplayDataModule]) -> None:
    data = _prepared(make)
    data.trainer = SimpleNamespace(training=True)
    whole = [batch["sample_ids"].tolist() for batch in data.train_dataloader()]
    stopped = data.train_dataloader()
    for batch, _ in zip(stopped, range(3), strict=False):
        data.on_after_batch_transfer(batch, 0)
    state = stopped.state_dict()
    assert state == {"epoch": 0, "position": 3 * data.batch_size}
    resumed = _prepared(make).train_dataloader()
    resumed.load_state_dict(state)
    assert [batch["sample_ids"].tolist() for batch in resumed] == whole[3:]


@each_module
def test_creating_an_iterator_leaves_the_global_rng_alone(make: Callable[..., ReplayDataModule]) -> None:
    data = _prepared(make)
    before = torch.get_rng_state()
    next(iter(data.train_dataloader()))
    next(iter(data.val_dataloader()))
    assert torch.equal(torch.get_rng_state(), before)


@each_module
def test_manifest_state_round_trip_and_refusal(name: str, make: Callable[..., ReplayDataModule]) -> None:
    saved = make().state_dict()
    assert saved == {"manifest": saved["manifest"], "manifest_digest": make().prepare().digest}
    make().load_state_dict(saved)  # the same data: accepted
    with pytest.raises(DataManifestMismatch, match="changed since it was written") as raised:
        make(**CASES[name][1]).load_state_dict(saved)
    assert (raised.value.exit_code, raised.value.failure_class) == (3, "data_invalid")


@each_module
def test_facts_say_what_a_model_must_know(name: str, make: Callable[..., ReplayDataModule]) -> None:
    data = make()
    facts = data.data_facts()
    tokenizer = getattr(data.prepare(), "tokenizer_digest", None) if name == "corpus" else None
    assert facts == dataclasses.replace(CASES[name][0], tokenizer_digest=tokenizer)
    assert name != "corpus" or (tokenizer is not None and len(tokenizer) == 64)  # what the ids mean, for adapters


@each_module
def test_declared_contracts(name: str, make: Callable[..., ReplayDataModule]) -> None:
    data = make()
    assert isinstance(data, ReplayData)
    assert isinstance(data, TokenizedData) == (name == "corpus")
    assert isinstance(data, ProbeData) == (name == "dynamics")


def test_the_corpus_tokenizer_a_run_keeps(cache: Path) -> None:
    data = corpus(cache)
    assert data.tokenizer_json() is None
    data.prepare()
    assert data.tokenizer_json() == data.tokenizer.to_str() and '"<|endoftext|>"' in data.tokenizer_json()


BAD_SETTINGS = [
    ("corpus", {"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ("corpus", {"num_workers": -1}, "num_workers must be 0 or more, got -1"),
    ("corpus", {"split": "random"}, "split must be one of hash, tail"),
    ("corpus", {"vocab_size": 0}, "vocab_size must be a positive integer"),
    ("dynamics", {"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ("dynamics", {"system": "pendulum"}, "system must be oscillators, lorenz or linear, got 'pendulum'"),
    ("dynamics", {"steps": 8}, r"steps \(8\) must exceed window \(8\)"),
    ("dynamics", {"dt": -0.1}, r"dt must be a time step in \(0, 1\], got -0.1"),  # was taken: integrated backwards
    ("dynamics", {"dt": float("nan")}, r"dt must be a time step in \(0, 1\], got nan"),
    ("events", {"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ("events", {"vocab_size": 100}, "vocab_size must be >= 300"),
    ("events", {"n_train": 0, "block_size": 0}, "n_train must .*block_size must"),
]


@pytest.mark.parametrize(("name", "overrides", "message"), BAD_SETTINGS)
def test_a_bad_setting_exits_2_before_any_data_is_built(
    name: str, overrides: dict, message: str, make: Callable[..., ReplayDataModule]
) -> None:
    with pytest.raises(DataConfigError, match=message) as raised:
        make(**overrides)
    assert (raised.value.exit_code, raised.value.failure_class) == (2, "config_invalid")


@each_module
def test_too_little_data_exits_3(make: Callable[..., ReplayDataModule]) -> None:
    data = make(batch_size=100_000)  # a valid setting the data cannot fill
    with pytest.raises(DataError, match=r"batch_size 100000 is larger than the .* training samples") as raised:
        data.prepare()
    assert (raised.value.exit_code, raised.value.failure_class) == (3, "data_invalid")
    assert data.manifest is None


@pytest.mark.parametrize("damage", ["a token renamed", "no record"])
def test_an_event_tokenizer_cache_entry_that_is_not_the_one_trained_is_trained_again(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage: str
) -> None:
    """The event tokenizer cache is shared by MOSAIC runs as the corpus one is: an entry edited in place (two ids
    swapped, it still loads) trained a new run on other token ids. It is trusted only as recorded when trained."""
    import json

    first = events(tmp_path)
    manifest = first.prepare()
    entry = first.tokenizer_path()
    if damage == "no record":
        entry.with_name("tokenizer.sha256").unlink()
    else:
        spec = json.loads(entry.read_text())
        vocab = spec["model"]["vocab"]
        a, b = list(vocab)[-2:]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        entry.write_text(json.dumps(spec))
    capsys.readouterr()
    again = events(tmp_path)
    assert again.prepare().digest == manifest.digest  # trained again, to the same tokenizer
    assert f"the cached tokenizer {entry} is {'unrecorded' if damage == 'no record' else 'altered'}" in \
        capsys.readouterr().err  # fmt: skip


@each_module
def test_a_cpu_batch_is_not_walked_to_move_it_nowhere(make: Callable[..., ReplayDataModule]) -> None:
    """Lightning's transfer walked every value of each batch to move CPU tensors to the CPU (about 20 us a step)."""
    import torch

    data = make()
    batch = {"input_ids": torch.zeros(2, 3), "cursor": [0, 2]}
    assert data.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch
    meta = data.transfer_batch_to_device(batch, torch.device("meta"), 0)  # any other device: Lightning's transfer
    assert meta is not batch and meta["input_ids"].device.type == "meta" and meta["cursor"] == [0, 2]
