"""MosaicLM: seed 003's three acceptance criteria on a small config, causality, exact resume, data pinning."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.run import read_latest
from lit_psion.events.traces import TraceSettings, generate_trace
from lit_psion.nn.decoder import DecoderConfig
from lit_psion.nn.mosaic import Mosaic, MosaicConfig
from tests.helpers import assert_tree_equal, fit, latest_checkpoint

MOSAIC_TINY = "fixtures/mosaic_tiny.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mosaic")
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
