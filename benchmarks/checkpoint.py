"""Checkpoint cost: a verified checkpoint against plain ``torch.save``, and async against sync writes.

1. ``save``: the same checkpoint (a decoder's weights plus its AdamW state after one step) written
   by lit_psion's ``write_checkpoint`` (safetensors + trainer state + sha256 manifest, staged,
   fsynced, renamed) and by one plain ``torch.save`` to a file followed by an fsync of it: the fair
   baseline, since a checkpoint that is not durable is not one. Alternating rounds;
   ``save_ratio_vs_torch_save_fsync`` is the median lit_psion time over the median durable
   ``torch.save`` time (target <= 1.25). ``save_ratio`` (against ``torch.save`` without the fsync)
   is reported beside it.
2. ``stall``: ``fit`` through the real CLI with no checkpoints, with a synchronous checkpoint every
   ``--every`` steps, and with ``--checkpoint.async_write true``. The stall of a mode is its timed
   window minus the no-checkpoint window; ``async_stall_ratio`` is async stall over sync stall
   (target <= 0.10). ``async_blocking_ratio`` compares only the time ``PointerCheckpoint.save``
   holds the training thread; the window also counts the CPU the background writer takes from
   training, which on a CPU-only machine is most of the cost.

    LIT_PSION_CACHE=/tmp/lpcache python benchmarks/checkpoint.py
    LIT_PSION_CACHE=/tmp/lpcache python benchmarks/checkpoint.py --rounds 1 --steps 30 --every 10   # smoke

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_clock import Clock, StepTimer
from throughput import REPO

from lit_psion.callbacks.checkpoint import PointerCheckpoint
from lit_psion.checkpoint_io import write_checkpoint
from lit_psion.cli import LitPsionCLI
from lit_psion.core.files import fsync_path
from lit_psion.nn import Decoder, DecoderConfig

SAVE_TARGET = 1.25
"""For lit_psion's save time over a durable torch.save's (with an fsync)."""
BLOCKED: list[tuple[int, float]] = []
"""(step, seconds) each PointerCheckpoint.save held the training thread, in the fit being timed."""


def _timed_save(save):
    def timed(self: PointerCheckpoint, trainer: L.Trainer) -> None:
        start = time.perf_counter()
        save(self, trainer)
        BLOCKED.append((trainer.global_step, time.perf_counter() - start))

    return timed


PointerCheckpoint.save = _timed_save(PointerCheckpoint.save)
STALL_TARGET = 0.10


def training_state(n_layer: int, d_model: int, vocab_size: int) -> dict:
    """A checkpoint dict as Lightning builds it: weights, optimizer state, loop counters."""
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(n_layer=n_layer, n_head=8, d_model=d_model, vocab_size=vocab_size, block_size=256))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(vocab_size, (2, 65))
    F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
    optimizer.step()
    return {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()], "global_step": 1,
            "epoch": 0, "lit_psion": {"run_id": "benchmark"}}  # fmt: skip


def time_saves(args: argparse.Namespace, tmp: Path) -> dict:
    state = training_state(args.n_layer, args.d_model, args.vocab_size)
    n_params = sum(t.numel() for t in state["state_dict"].values())
    manifest, plain, plain_fsync = [], [], []
    for index in range(args.rounds * 2):
        order = ("manifest", "plain") if index % 2 == 0 else ("plain", "manifest")
        for side in order:
            target = tmp / f"{side}-{index}"
            start = time.perf_counter()
            if side == "manifest":
                write_checkpoint(state, target)
                manifest.append(time.perf_counter() - start)
            else:
                torch.save(state, target)
                plain.append(time.perf_counter() - start)
                fsync_path(target)
                plain_fsync.append(time.perf_counter() - start)
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    manifest_s, plain_s = statistics.median(manifest), statistics.median(plain)
    return {
        "save_ratio_vs_torch_save_fsync": round(manifest_s / statistics.median(plain_fsync), 4),
        "save_target": SAVE_TARGET,
        "save_meets_target": manifest_s / statistics.median(plain_fsync) <= SAVE_TARGET,
        "save_ratio": round(manifest_s / plain_s, 4),
        "manifest_save_s": round(manifest_s, 4),
        "torch_save_s": round(plain_s, 4),
        "torch_save_fsync_s": round(statistics.median(plain_fsync), 4),
        "checkpoint_mb": round(sum(t.numel() * t.element_size() for t in _tensors(state)) / 2**20, 1),
        "params": n_params,
    }


def _tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in _tensors(value)]
    if isinstance(obj, list | tuple):
        return [t for value in obj for t in _tensors(value)]
    return []


def timed_fit(args: argparse.Namespace, root: Path, mode: str) -> float:
    """Seconds of the timed window of one fit; ``mode`` is none, sync or async."""
    clock = Clock(args.warmup, args.steps)
    every = str(args.every) if mode != "none" else str(10**9)
    cli_args = [
        "fit", "--config", str(REPO / "configs" / "decoder_tiny.yaml"), "--trainer.max_steps", str(args.steps),
        "--trainer.default_root_dir", str(root), "--trainer.limit_val_batches", "0",
        "--trainer.enable_model_summary", "false", "--progress_bar.refresh_rate", "0",
        "--dashboard.enabled", "false", "--data.init_args.max_bytes", "1000000",
        "--model.init_args.decoder.n_layer", str(args.fit_layers), "--model.init_args.decoder.d_model",
        str(args.fit_d_model), "--data.init_args.batch_size", str(args.fit_batch_size),
        "--data.init_args.block_size", str(args.fit_block_size), "--checkpoint.every_n_train_steps", every,
        "--checkpoint.async_write", str(mode == "async").lower(), "--checkpoint.keep_last_k", "2",
    ]  # fmt: skip
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            LitPsionCLI(args=cli_args, callbacks=[StepTimer(clock)])
    finally:
        sys.argv = argv
    # The step-`steps` checkpoint is written after the last tick; take the window to the step before,
    # so each mode's window holds the same number of checkpoints that must overlap training.
    return clock.ticks[-2] - clock.ticks[0]


def time_stalls(args: argparse.Namespace, tmp: Path) -> dict:
    windows: dict[str, list[float]] = {"none": [], "sync": [], "async": []}
    blocked: dict[str, list[float]] = {"sync": [], "async": []}
    for index in range(args.rounds):
        modes = ["none", "sync", "async"] if index % 2 == 0 else ["async", "sync", "none"]
        for mode in modes:
            BLOCKED.clear()
            windows[mode].append(timed_fit(args, tmp / f"{mode}{index}", mode))
            if mode != "none":
                blocked[mode].append(sum(t for step, t in BLOCKED if step < args.steps))  # as the window
            shutil.rmtree(tmp / f"{mode}{index}", ignore_errors=True)
            print(f"round {index} {mode}: {windows[mode][-1]:.2f} s", file=sys.stderr)
    base = statistics.median(windows["none"])
    sync_stall = statistics.median(windows["sync"]) - base
    async_stall = statistics.median(windows["async"]) - base
    ratio = async_stall / sync_stall if sync_stall > 0 else float("nan")
    blocking = statistics.median(blocked["async"]) / statistics.median(blocked["sync"])
    return {
        "async_stall_ratio": round(ratio, 4),
        "async_blocking_ratio": round(blocking, 4),
        "sync_blocked_s": round(statistics.median(blocked["sync"]), 3),
        "async_blocked_s": round(statistics.median(blocked["async"]), 3),
        "stall_target": STALL_TARGET,
        "stall_meets_target": ratio <= STALL_TARGET,
        "sync_stall_s": round(sync_stall, 3),
        "async_stall_s": round(async_stall, 3),
        "window_s": {mode: [round(w, 3) for w in ws] for mode, ws in windows.items()},
        "checkpoints_in_window": len(range(args.every, args.steps, args.every)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-layer", type=int, default=6, help="save benchmark model layers")
    parser.add_argument("--d-model", type=int, default=384, help="save benchmark model width")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=60, help="stall benchmark: steps per fit")
    parser.add_argument("--warmup", type=int, default=10, help="stall benchmark: leading steps not timed")
    parser.add_argument("--every", type=int, default=10, help="stall benchmark: steps between checkpoints")
    # The stall fit: a wide, shallow decoder on small batches, so a checkpoint (~100 MB with optimizer
    # state) takes several training steps' time and its stall stands out of the step-time noise.
    parser.add_argument("--fit-layers", type=int, default=2)
    parser.add_argument("--fit-d-model", type=int, default=512)
    parser.add_argument("--fit-batch-size", type=int, default=4)
    parser.add_argument("--fit-block-size", type=int, default=64)
    parser.add_argument("--skip", choices=["save", "stall"], help="leave one part out")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    result: dict = {"benchmark": "checkpoint"}
    with tempfile.TemporaryDirectory(prefix="lit_psion_ckpt_bench_", dir=os.environ.get("TMPDIR")) as tmp:
        if args.skip != "save":
            result.update(time_saves(args, Path(tmp)))
        if args.skip != "stall":
            result.update(time_stalls(args, Path(tmp)))
    result.update({
        "rounds": args.rounds, "threads": torch.get_num_threads(),
        "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2),
    })  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
