"""MosaicLM: seed 003's three acceptance criteria on a small config, causality, exact resume, data pinning."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from lit_psion.cli import main
from lit_psion.core import read_json, sha256_file
from lit_psion.core.run import read_latest
from lit_psion.events.traces import TraceSettings, generate_trace
from lit_psion.nn.decoder import DecoderConfig
from lit_psion.nn.mosaic import Mosaic, MosaicConfig
from tests.helpers import assert_tree_equal, fit, latest_checkpoint

MOSAIC_TINY = "fixtures/mosaic_tiny.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mosaic")
    with pytest.MonkeyPatch.context() as patch:  # the session's cache, as the function-scoped tests see it
        patch.setenv("LIT_PSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        # 1. runtime: the fit completes
        assert fit("--trainer.default_root_dir", str(root), config=MOSAIC_TINY) == 0
    return root / read_latest(root)


def test_tiny_preset_meets_the_seed_acceptance_criteria(trained: Path) -> None:
    run = trained
    assert read_json(run / "run.json")["status"] == "completed"
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    # 2. learning: aux_commitment_ce over the last 10% of steps is below half that of the first 10%
    ce = [float(r["train/aux_commitment_ce"]) for r in rows if r.get("train/aux_commitment_ce")]
    tenth = len(ce) // 10
    assert statistics.fmean(ce[-tenth:]) < 0.5 * statistics.fmean(ce[:tenth])
    # 3. behaviour: on held-out negotiation traces, +1 on "I will ..." and -1 on "Here is ..." spans
    final = {k: float(v) for r in rows for k, v in r.items() if k.startswith("val/commitment_acc") and v}
    assert final["val/commitment_acc_open"] >= 0.95 and final["val/commitment_acc_close"] >= 0.95, final


def test_the_memory_and_heads_are_causal() -> None:
    torch.manual_seed(0)
    model = Mosaic(
        DecoderConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, d_model=32),
        MosaicConfig(mem_buckets=2, mem_hashes=2),
    )  # 2 buckets: nearly every pair shares one
    torch.nn.init.normal_(model.memory.out.weight, std=0.5)  # make the memory's contribution visible
    tokens = torch.randint(64, (2, 32))
    changed = tokens.clone()
    changed[:, 20:] = torch.randint(64, (2, 12))
    a, b = model(tokens), model(changed)
    for key in ("logits", "mosaic_opcode_logits", "mosaic_commitment_logits"):
        assert torch.allclose(a[key][:, :20], b[key][:, :20], atol=1e-6), key
        assert not torch.allclose(a[key][:, 20:], b[key][:, 20:]), key


N = 60
PINNED = ("--trainer.max_steps", str(N), "--model.init_args.optimizer.decay_steps", str(N),
          "--trainer.val_check_interval", "30", "--checkpoint.every_n_train_steps", "25")  # fmt: skip


@pytest.mark.slow  # default-suite budget: two MOSAIC fits and a kill (~30 s), run by CI's slow step
def test_a_stopped_mosaic_run_resumes_bitwise(tmp_path: Path) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    assert fit("--trainer.default_root_dir", str(full), *PINNED, config=MOSAIC_TINY) == 0
    assert fit("--trainer.default_root_dir", str(split), *PINNED, "--trainer.max_steps", "37",
               config=MOSAIC_TINY) == 0  # fmt: skip
    assert fit("--trainer.default_root_dir", str(split), *PINNED, "--ckpt_path", "last", config=MOSAIC_TINY) == 0
    reference, resumed = latest_checkpoint(full), latest_checkpoint(split)
    assert resumed["global_step"] == N
    assert_tree_equal(resumed["state_dict"], reference["state_dict"], "state_dict")
    assert_tree_equal(resumed["optimizer_states"], reference["optimizer_states"], "optimizer_states")


def test_resuming_against_different_traces_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = ("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "5")
    assert fit(*root, config=MOSAIC_TINY) == 0
    code = fit(*root, "--trainer.max_steps", "8", "--ckpt_path", "last", "--data.n_pairs", "3", config=MOSAIC_TINY)
    assert code == 3
    assert "event-trace data changed" in capsys.readouterr().err


def test_events_predict_tracks_commitments_on_new_traces(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    trace = generate_trace(TraceSettings(n_pairs=2, distractor_events=1, negotiation_pairs=2), 99, "heldout", 0)
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(s.event.to_json_dict()) + "\n" for s in trace))
    assert main(["events", "predict", "--ckpt", str(trained), str(events), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = [s.event.commitment_delta for s in trace]
    assert [r["predicted_delta"] for r in rows] == expected
    assert rows[-1]["open"] == [] and max(len(r["open"]) for r in rows) == 1


def test_events_predict_names_the_bad_line(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    events = tmp_path / "events.jsonl"
    good = {"id": "a", "type": "Message", "sender": "u", "payload": {"text": "hi"}, "seq": 0}
    events.write_text(json.dumps(good) + "\n" + json.dumps({**good, "commitment_delta": 2}) + "\n")
    assert main(["events", "predict", "--ckpt", str(trained), str(events)]) == 3
    assert "events.jsonl:2" in capsys.readouterr().err


def _rank_gradient(rank: int, port: int, logits_in: torch.Tensor, labels: torch.Tensor, out: dict) -> None:
    """One DDP-like rank: its slice's share of the global-batch mean, then the averaged gradient."""
    import torch.distributed as dist

    from lit_psion.models.mosaic_lm import masked_ce

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        half = len(labels) // 2
        weight = torch.nn.Parameter(torch.eye(logits_in.shape[1]))
        mine = slice(rank * half, (rank + 1) * half)

        def reduce_sum(count: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(count)
            return count

        masked_ce(logits_in[mine] @ weight, labels[mine], world=2, reduce_sum=reduce_sum).backward()
        dist.all_reduce(weight.grad)
        out[rank] = (weight.grad / 2).clone()  # DDP averages gradients over ranks
    finally:
        dist.destroy_process_group()


def test_an_auxiliary_loss_over_rank_slices_has_the_global_batch_gradient() -> None:
    import socket

    import torch.multiprocessing as mp

    from lit_psion.models.mosaic_lm import IGNORE, masked_ce

    generator = torch.Generator().manual_seed(3)
    logits_in = torch.randn(8, 5, generator=generator)
    labels = torch.tensor([IGNORE, IGNORE, IGNORE, 2, 0, 1, 4, 3])  # rank 0 has 1 labelled position, rank 1 has 4
    weight = torch.nn.Parameter(torch.eye(5))
    masked_ce(logits_in @ weight, labels).backward()
    expected = weight.grad.clone()
    naive = torch.nn.Parameter(torch.eye(5))  # each rank's own mean, averaged: what a per-rank mean gives
    ((masked_ce(logits_in[:4] @ naive, labels[:4]) + masked_ce(logits_in[4:] @ naive, labels[4:])) / 2).backward()
    assert not torch.allclose(naive.grad, expected, atol=1e-4), "the case must tell the two apart"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_gradient, args=(port, logits_in, labels, out), nprocs=2, join=True)
        for rank in (0, 1):
            assert torch.allclose(out[rank], expected, atol=1e-6), rank


# --- the memory ablation (benchmarks/mosaic_memory.py): a sliding window, the memory beyond it, gates off ---

SMALL = {"vocab_size": 64, "block_size": 32, "n_layer": 2, "n_head": 2, "d_model": 32}
WINDOW, FAR = 3, 4
"""Two blocks with a window of 3 reach 4 positions back: position FAR + 5 = 9 onwards cannot see token FAR."""


def windowed(**mosaic: object) -> Mosaic:
    torch.manual_seed(0)
    model = Mosaic(DecoderConfig(**SMALL), MosaicConfig(mem_buckets=1, mem_hashes=2, attention_window=WINDOW,
                                                        commitment_head=False, **mosaic))  # fmt: skip
    if model.memory is not None:
        torch.nn.init.normal_(model.memory.out.weight, std=0.5)  # make the memory's contribution visible
    return model.eval()


def far_change(model: Mosaic, memory_gates: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, T, vocab) before and after changing token FAR."""
    tokens = torch.randint(64, (2, 32), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[:, FAR] = (changed[:, FAR] + 1) % 64
    return model(tokens, memory_gates=memory_gates)["logits"], model(changed, memory_gates=memory_gates)["logits"]


def test_without_memory_a_token_beyond_the_window_never_reaches_later_positions() -> None:
    for model, gates in ((windowed(memory=False), True), (windowed(), False)):
        before, after = far_change(model, gates)
        assert torch.equal(before[:, FAR + 5 :], after[:, FAR + 5 :])
        assert not torch.allclose(before[:, FAR : FAR + 5], after[:, FAR : FAR + 5])


def test_the_memory_carries_a_token_beyond_the_window() -> None:
    before, after = far_change(windowed())
    assert not torch.allclose(before[:, FAR + 5 :], after[:, FAR + 5 :])
    assert (before - after)[:, -1].abs().max() > 1e-3  # still felt at the last position, 27 tokens on


def test_gates_off_is_the_decoder_without_the_memory_bitwise() -> None:
    with_memory, without = windowed(), windowed(memory=False)
    kept = {k: v for k, v in with_memory.state_dict().items() if not k.startswith("memory.")}
    without.load_state_dict(kept)
    tokens = torch.randint(64, (2, 32))
    assert torch.equal(with_memory(tokens, memory_gates=False)["logits"], without(tokens)["logits"])
    assert not torch.allclose(with_memory(tokens)["logits"], without(tokens)["logits"])
    assert without.memory is None and len(without.hidden_matrices()) == len(with_memory.hidden_matrices()) - 2


def test_a_read_recalls_what_followed_the_same_context() -> None:
    """A write is filed under the address of the position before it: a read in that context recalls it."""
    torch.manual_seed(0)
    memory = Mosaic(DecoderConfig(**SMALL), MosaicConfig(mem_buckets=1, mem_key_dim=32)).memory
    x = torch.randn(1, 6, 32)
    x[0, 4] = x[0, 1]  # position 4 is in the context of position 1, so it should recall position 2
    with torch.no_grad():
        memory.address.weight.copy_(torch.eye(32) * 1.5)
        memory.value.weight.copy_(torch.eye(32))
        memory.out.weight.copy_(torch.eye(32))
        ones = torch.ones(1, 6)
        recalled = memory(x, ones, ones)[0, 4]  # (d_model,)
        cosine = torch.nn.functional.cosine_similarity(recalled, memory.norm(x)[0], dim=-1)
        assert cosine.argmax() == 2 and cosine[2] > 0.95, cosine
        assert torch.equal(memory(x, ones, torch.zeros(1, 6)), torch.zeros(1, 6, 32))  # read gate 0: nothing read
        write = torch.ones(1, 6)
        write[0, 2] = 0.0  # position 2 never written: the read finds something else or nothing
        assert torch.nn.functional.cosine_similarity(memory(x, write, ones)[0, 4], memory.norm(x)[0, 2], dim=0) < 0.9


@pytest.mark.parametrize(
    ("targets", "mask", "predicted", "expected"),
    [
        ([[5, 6, 7, 8]], [[0, 1, 1, 0]], [[5, 6, 0, 8]], (1, 2)),  # only flagged targets count
        ([[1, 2], [3, 4]], [[1, 1], [0, 1]], [[1, 0], [3, 4]], (2, 3)),  # across rows
        ([[9, 9, 9]], [[1, 1, 1]], [[9, 9, 9]], (3, 3)),
        ([[9, 9, 9]], [[1, 0, 1]], [[0, 9, 0]], (0, 2)),  # a hit where nothing is flagged is not counted
    ],
)
def test_recall_accuracy_counts_only_flagged_value_tokens(targets: list, mask: list, predicted: list,
                                                          expected: tuple[int, int]) -> None:  # fmt: skip
    from lit_psion.models.mosaic_lm import recall_accuracy_metric, recall_labels

    targets_t, mask_t = torch.tensor(targets), torch.tensor(mask, dtype=torch.bool)
    logits = torch.nn.functional.one_hot(torch.tensor(predicted), 16).float()
    accuracy = recall_accuracy_metric(16)
    accuracy.update(logits.flatten(0, 1), recall_labels(targets_t, mask_t).flatten())
    assert float(accuracy.compute()) == pytest.approx(expected[0] / expected[1])
    assert (recall_labels(targets_t, mask_t) != -100).sum() == expected[1]
    assert (recall_labels(targets_t, torch.zeros_like(mask_t)) == -100).all()  # nothing flagged: nothing counted


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attention_window": 0}, "attention_window must be a positive integer or None.*got 0"),
        ({"attention_window": "64"}, "attention_window must be a positive integer or None.*got '64'"),
        ({"memory": "no"}, "memory must be true or false, got 'no'"),
        ({"mem_buckets": 0}, "mem_buckets must be an integer >= 1, got 0"),
        # 2**70 trained with bucket ids past int64 (powers of 0, a negative one), while config.yaml said 2**70.
        ({"mem_buckets": 2**70}, r"mem_buckets must be at most 2\*\*63 \(a bucket id is a 64-bit integer\), got "
         "1180591620717411303424"),
        ({"mem_buckets": 0, "memory": 1}, "mem_buckets must be .* got 0; memory must be true or false, got 1"),
        # 100000 passed (its hyperplanes are small) and the first step's read grew until the kernel killed the fit.
        ({"mem_hashes": 100000}, r"mem_hashes must be at most 64: each hash adds a \(batch, block, block\) "
         r"comparison to every step's memory read \(the seed's is 2\), got 100000"),
    ],
)
def test_bad_mosaic_config_is_refused_quoting_the_value(change: dict, message: str) -> None:
    from lit_psion.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        MosaicConfig(**change)


def test_the_signature_records_new_options_only_when_set_and_always_the_memory_addressing() -> None:
    old_fields = {"mem_buckets", "mem_hashes", "mem_key_dim", "memory_layer", "commitment_head", "hash_seed"}
    signed = old_fields | {"memory_addressing"}  # checkpoints whose memory filed writes otherwise are refused
    assert MosaicConfig().signed().keys() == signed
    assert MosaicConfig().signed()["memory_addressing"] == "previous_position"
    assert MosaicConfig(attention_window=32, memory=False).signed().keys() == signed | {"attention_window", "memory"}


def test_the_memory_preset_logs_recall_accuracy(tmp_path: Path) -> None:
    small = ("--data.n_train", "40", "--data.n_val", "10", "--data.tokenizer_traces", "30")
    assert fit("--trainer.default_root_dir", str(tmp_path), *small, "--trainer.max_steps", "2",
               "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "2",
               config="configs/mosaic_memory.yaml") == 0  # fmt: skip
    with open(tmp_path / read_latest(tmp_path) / "metrics.csv") as handle:
        recall = [float(r["val/recall_acc"]) for r in csv.DictReader(handle) if r.get("val/recall_acc")]
    assert len(recall) == 1 and 0.0 <= recall[0] <= 1.0


BAD_EVENT_FILES = [  # (the file's bytes, what the one line names) -- each a data error (exit 3), never a traceback
    (b'{"id": "a", "type": "Message", "sender": "u", "payload": {"text": "caf\xe9"}, "seq": 0}\n', "not UTF-8 text"),
    (b'{"id": "a", "type": "Message", "sender": "u", "payload": {"text": "\\ud800"}, "seq": 0}\n', "not valid Unicode"),
]


@pytest.mark.parametrize(("content", "says"), BAD_EVENT_FILES, ids=["latin-1 byte", "lone surrogate"])
def test_events_predict_refuses_text_that_is_not_text(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      content: bytes, says: str) -> None:  # fmt: skip
    events = tmp_path / "events.jsonl"
    events.write_bytes(content)
    assert main(["events", "predict", "--ckpt", str(trained), str(events)]) == 3
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_events_predict_prints_a_payload_text_that_is_not_a_string(trained: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"id": "a", "type": "Message", "sender": "u", "payload": {"text": 5}, "seq": 0}))
    assert main(["events", "predict", "--ckpt", str(trained), str(events)]) == 0
    assert capsys.readouterr().out.splitlines()[0].rstrip().endswith("5")


def _good_events(tmp_path: Path) -> Path:
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"id": "a", "type": "Message", "sender": "u", "payload": {"text": "hi"}, "seq": 0}))
    return events


def _reweigh(run: Path) -> Path:
    """The pointed-to checkpoint with other weights, its manifest and pointer re-hashed to match them."""
    from safetensors.torch import load_file, save_file

    step = run / "checkpoints" / read_json(run / "checkpoints" / "pointer.json")["checkpoint"]
    weights = load_file(step / "model.safetensors")
    weights = {name: tensor + 1 if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    save_file(weights, step / "model.safetensors", metadata={"format": "pt"})
    manifest = read_json(step / "manifest.json")
    for name, entry in manifest["files"].items():
        entry.update(bytes=(step / name).stat().st_size, sha256=sha256_file(step / name))
    (step / "manifest.json").write_text(json.dumps(manifest))
    pointer = read_json(run / "checkpoints" / "pointer.json")
    pointer["manifest_sha256"] = sha256_file(step / "manifest.json")
    (run / "checkpoints" / "pointer.json").write_text(json.dumps(pointer))
    return step


def test_events_predict_is_held_to_the_runs_receipts_and_records(trained: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """What ckpt verify and doctor refuse, events predict does not use: a checkpoint re-weighed with its manifest and
    pointer re-hashed (its durable receipt still names the old digests), and a config.yaml edited after the run."""
    events = _good_events(tmp_path)
    run = tmp_path / trained.name  # a run directory keeps its run id's name
    shutil.copytree(trained, run)
    step = _reweigh(run)
    capsys.readouterr()
    assert main(["events", "predict", "--ckpt", str(step), str(events)]) == 4
    assert "not the ones its durable checkpoint receipt recorded" in capsys.readouterr().err
    assert main(["ckpt", "verify", str(step)]) == 4  # the same verdict
    shutil.rmtree(run)
    shutil.copytree(trained, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("d_model: 64", "d_model: 32", 1))
    assert "d_model: 32" in config.read_text()
    capsys.readouterr()
    assert main(["events", "predict", "--ckpt", str(run), str(events)]) == 3
    err = capsys.readouterr().err
    assert "config.yaml: config digest " in err and "differs from run.json's" in err and "Traceback" not in err


def test_events_predict_refuses_another_family_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A graph core's weights would not fit MosaicLM (it crashed with a size mismatch, exit 1)."""
    root = tmp_path / "runs"
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "2",
               config="configs/graph_core_oscillators.yaml") == 0  # fmt: skip
    capsys.readouterr()
    assert main(["events", "predict", "--ckpt", str(root / read_latest(root)), str(_good_events(tmp_path))]) == 4
    assert "trained GraphCore, not MosaicLM" in capsys.readouterr().err  # another model: exit 4, as for fit
    assert main(["events", "predict", "--ckpt", str(root / read_latest(root)), str(tmp_path / "none.jsonl")]) == 3
    assert "events file" in capsys.readouterr().err  # missing data: exit 3, as for a data file


def test_doctor_checks_the_event_tokenizer_the_run_trained_with(trained: Path, capsys: pytest.CaptureFixture) -> None:
    """A MOSAIC run's event tokenizer stays in the cache, pinned by its data manifest: doctor used to say nothing of
    it, while events predict refused the run. Replaced with a consistent digest record (the cache's own check cannot
    tell), it fails the doctor as data (exit 3); absent, it is trained again when needed."""
    from lit_psion.datamodules.token_cache import default_cache_dir
    from lit_psion.datamodules.tokenizer import event_tokenizer_path

    entry = event_tokenizer_path(read_json(trained / "data_manifest.json"), default_cache_dir(None))
    saved = entry.parent.with_name(entry.parent.name + ".saved")
    capsys.readouterr()
    assert main(["doctor", str(trained)]) == 0
    assert f"ok   event tokenizer: matches the manifest's tokenizer_digest ('{entry}')" in capsys.readouterr().out
    shutil.copytree(entry.parent, saved)
    try:
        spec = json.loads(entry.read_text())
        vocab = spec["model"]["vocab"]
        first, second = list(vocab)[-2:]
        vocab[first], vocab[second] = vocab[second], vocab[first]
        entry.write_text(json.dumps(spec))
        assert main(["doctor", str(trained)]) == 3  # its own record disagrees: the cache's check sets it aside
        assert "the next events predict or resume sets it aside and trains it again" in capsys.readouterr().out
        entry.with_name("tokenizer.sha256").write_text(sha256_file(entry) + "\n")
        assert main(["doctor", str(trained)]) == 3
        assert "FAIL event tokenizer" in (out := capsys.readouterr().out) and "events predict refuses it" in out
        shutil.rmtree(entry.parent)
        assert main(["doctor", str(trained)]) == 0
        assert "ok   event tokenizer: absent from" in capsys.readouterr().out
    finally:
        shutil.rmtree(entry.parent, ignore_errors=True)
        saved.rename(entry.parent)


def test_events_predict_refuses_a_run_without_a_commitment_head(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A MosaicLM run trained without the head (configs/mosaic_memory.yaml's commitment_head: false) was exit 1, a
    KeyError for the logits it has not."""
    monkeypatch.setenv("LIT_PSION_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "runs"
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "2",
               "--model.init_args.mosaic.commitment_head", "false", config=MOSAIC_TINY) == 0  # fmt: skip
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"id": "a", "type": "Message", "sender": "u", "payload": {"text": "hi"}, "seq": 0}))
    capsys.readouterr()
    assert main(["events", "predict", "--ckpt", str(root / read_latest(root)), str(events)]) == 4
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "without a commitment head (mosaic.commitment_head false)" in line and "give a run trained with" in line


def test_events_predict_names_a_grown_cached_tokenizer_not_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached event tokenizer given one more token (its record rewritten): the model built from it had another
    vocabulary, so the weights did not fit and the line blamed the checkpoint (exit 4), not the tokenizer."""
    from datamodules.tokenizer import keep_recorded

    monkeypatch.setenv("LIT_PSION_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "runs"
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "2", config=MOSAIC_TINY) == 0
    (cached,) = (tmp_path / "cache" / "event_tokenizers").glob("*/tokenizer.json")
    record = json.loads(cached.read_text())
    vocab = record["model"]["vocab"]
    vocab["zzgrown"] = max(vocab.values()) + 1
    keep_recorded(cached, json.dumps(record))
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"id": "a", "type": "Message", "sender": "u", "payload": {"text": "hi"}, "seq": 0}))
    capsys.readouterr()
    assert main(["events", "predict", "--ckpt", str(root / read_latest(root)), str(events)]) == 3
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "the event tokenizer here" in line and "is not the one run" in line, line
