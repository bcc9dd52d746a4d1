"""DDP against FSDP2 (the sharded strategy) at world 2 on CPU: memory per rank, tokens/s, checkpoint cost.

Both sides are the real ``python -m lit_psion fit`` at ``--trainer.devices 2`` (gloo, one torch
thread per rank) on the same ~116M-parameter decoder (d_model 896, 12 blocks; the size from which
sharding's saving outweighs the ~600 MB every process spends on torch and Lightning), the same data, batch,
optimizer (AdamW) and steps, run one after the other (never at once: two runs would share the 2
cores). A probe callback in every rank records:

- ``peak_rss_mb``: the rank's peak resident memory (``ru_maxrss``), everything included;
- ``state_mb``: the bytes the rank holds for parameters, gradients and optimizer state (local
  shards under FSDP2) at the end of a step: what sharding divides;
- ``tokens_per_s``: global tokens over the steady-state steps (after ``--warmup``), on rank 0;
- ``save_s`` and ``bytes_written``: each checkpoint's save time and the bytes each rank wrote
  (from the checkpoint manifests: under DDP rank 0 writes everything).

    python benchmarks/scale.py                 # the measurement (about 6 minutes)
    python benchmarks/scale.py --d-model 640 --n-layer 10 --steps 14 --warmup 4 --checkpoint-every 7   # ~49M
    python benchmarks/scale.py --steps 6 --warmup 2 --d-model 128 --n-layer 2   # smoke

The last line of stdout is one JSON object with one entry per allocator setting (glibc's default, and
a fixed 128 KiB mmap threshold, both sides alike): ``memory_ratio`` is FSDP2's peak RSS per rank
over DDP's (goal <= 0.65), ``state_ratio`` the same for the held state, ``throughput_ratio``
FSDP2's tokens/s over DDP's (goal >= 0.8); ``both_met_by`` names the allocator settings under which
one run met both goals.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parent.parent
MEMORY_TARGET, THROUGHPUT_TARGET = 0.65, 0.8
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


class ScaleProbe(Callback):
    """Per-rank measurements, written to ``<out>/rank<r>.json`` when fit ends."""

    def __init__(self, out: str, warmup: int) -> None:
        self.out, self.warmup = Path(out), warmup
        self.ticks: list[float] = []
        self.saves: list[float] = []
        self.state_bytes = self._grad_bytes = 0
        self.peaks: dict[str, float] = {}
        """Peak RSS (MiB) reached by each point of the run: where the peak comes from."""

    def _mark(self, where: str) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        now = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        self.peaks.setdefault(where, (round(peak, 1), round(now, 1)))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        strategy, probe = trainer.strategy, self
        original = strategy.save_checkpoint
        self._mark("setup (model built, not yet sharded)")

        def timed(*args: Any, **kwargs: Any) -> None:
            probe._mark("before the first checkpoint")
            started = time.perf_counter()
            original(*args, **kwargs)
            probe.saves.append(time.perf_counter() - started)
            probe._mark("after the first checkpoint")

        strategy.save_checkpoint = timed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark("train start (sharded, optimizer built)")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == 1:
            self._mark("after step 1")
        if trainer.global_step >= self.warmup:
            self.ticks.append(time.perf_counter())
        if trainer.global_step == self.warmup:  # after an optimizer step: Adam's moments all exist
            held = list(pl_module.parameters())
            held += [t for optimizer in trainer.optimizers for state in optimizer.state.values()
                     for t in state.values() if isinstance(t, torch.Tensor) and t.dim() > 0]  # fmt: skip
            self.state_bytes = self._grad_bytes + sum(_local(t).numel() * t.element_size() for t in held)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.warmup - 1:  # the gradients of that step (freed once the optimizer steps)
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            self._grad_bytes = sum(_local(g).numel() * g.element_size() for g in grads)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        # A DTensor's numel is its global size, so the count is the whole model's on every rank.
        record = {"rank": trainer.global_rank, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "state_mb": self.state_bytes / 2**20, "peaks": self.peaks, "ticks": self.ticks, "save_s": self.saves,
                  "parameters": sum(p.numel() for p in pl_module.parameters())}  # fmt: skip
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


ALLOCATORS = {"glibc-default": {}, "mmap-threshold-128k": {"MALLOC_MMAP_THRESHOLD_": "131072"}}
"""glibc's sliding mmap threshold lets FSDP2's per-block gather buffers (tens of MB, freed every block)
land on the heap, which fragments and keeps RSS high; a fixed threshold returns them to the OS."""


def run(kind: str, args: argparse.Namespace, workdir: Path, allocator: str) -> dict[str, Any]:
    workdir = workdir / allocator
    workdir.mkdir(parents=True, exist_ok=True)
    probe_dir = workdir / f"{kind}-probe"
    callbacks = {"trainer": {"callbacks": [{"class_path": "benchmarks.scale.ScaleProbe",
                                            "init_args": {"out": str(probe_dir), "warmup": args.warmup}}]}}  # fmt: skip
    overlay = workdir / f"{kind}-callbacks.json"
    overlay.write_text(json.dumps(callbacks))
    strategy = ["--config", "configs/overlays/fsdp.yaml", "--trainer.strategy.init_args.reshard_after_forward",
                str(args.reshard_after_forward).lower()] if kind == "fsdp2" else ["--trainer.strategy", "ddp"]
    corpus = str(CORPUS) if CORPUS.is_file() else "fixtures/tiny_corpus.txt"
    command = [sys.executable, "-m", "lit_psion", "fit", "--config", "fixtures/tiny.yaml", *strategy,
               "--config", str(overlay), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
               "--trainer.default_root_dir", str(workdir / kind), "--trainer.max_steps", str(args.steps),
               "--trainer.val_check_interval", str(10**6), "--trainer.limit_val_batches", "0",
               "--checkpoint.every_n_train_steps", str(args.checkpoint_every),
               "--model.init_args.optimizer.name", "adamw", "--model.init_args.decoder.dropout", "0.0",
               "--model.init_args.decoder.d_model", str(args.d_model), "--model.init_args.decoder.n_layer",
               str(args.n_layer), "--model.init_args.decoder.n_head", str(max(1, args.d_model // 64)),
               "--data.files", corpus, "--data.block_size", str(args.block_size),
               "--data.batch_size", str(args.batch_size), "--data.sample_stride", str(args.block_size),
               "--receipts.every_n_steps", "1", "--telemetry.every_n_steps", str(10**6),
               "--dashboard.enabled", "false"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **ALLOCATORS[allocator]}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{kind} run failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    ranks = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in range(2)]
    ticks = ranks[0]["ticks"]
    tokens = args.batch_size * args.block_size * (len(ticks) - 1)
    run_dir = next(p for p in (workdir / kind).iterdir() if (p / "run.json").is_file())
    return {
        "parameters": ranks[0]["parameters"],
        "peak_rss_mb_per_rank": [round(r["peak_rss_mb"], 1) for r in ranks],
        "rank0_rss_mb_at": {where: {"peak": mb[0], "now": mb[1]} for where, mb in ranks[0]["peaks"].items()},
        "state_mb_per_rank": [round(r["state_mb"], 1) for r in ranks],
        "tokens_per_s": round(tokens / (ticks[-1] - ticks[0]), 1) if len(ticks) > 1 else None,
        "save_s_per_rank": [[round(s, 3) for s in r["save_s"]] for r in ranks],
        "bytes_written_per_rank": _bytes_per_rank(run_dir, kind),
        "wall_s": round(wall, 1),
    }


def _bytes_per_rank(run_dir: Path, kind: str) -> list[int]:
    """Bytes each rank wrote for the last checkpoint (DCP shards are ``__<rank>_*``; rank 0 writes the rest)."""
    last = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    files = json.loads((last / "manifest.json").read_text())["files"]
    per_rank = [0, 0]
    for name, record in files.items():
        rank = int(name[2]) if kind == "fsdp2" and name.startswith("__") else 0
        per_rank[rank] += record["bytes"]
    return per_rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--d-model", type=int, default=896)
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4, help="the global batch (2 samples per rank)")
    parser.add_argument("--reshard-after-forward", type=lambda v: v.lower() == "true", default=True,
                        help="FSDP2: true (ZeRO-3, the default) or false (gather each block once per step)")
    parser.add_argument("--allocators", default=",".join(ALLOCATORS), help=f"comma-separated: {list(ALLOCATORS)}")
    args = parser.parse_args()
    report: dict[str, Any] = {"benchmark": "scale", "world_size": 2, "device": "cpu", "threads_per_rank": 1,
                              **vars(args), "memory_target": MEMORY_TARGET, "throughput_target": THROUGHPUT_TARGET}
    for allocator in args.allocators.split(","):
        with tempfile.TemporaryDirectory(prefix="lit_psion-scale-") as tmp:
            ddp, fsdp = (run(kind, args, Path(tmp), allocator) for kind in ("ddp", "fsdp2"))
        memory = max(fsdp["peak_rss_mb_per_rank"]) / max(ddp["peak_rss_mb_per_rank"])
        state = max(fsdp["state_mb_per_rank"]) / max(ddp["state_mb_per_rank"])
        speed = fsdp["tokens_per_s"] / ddp["tokens_per_s"] if fsdp["tokens_per_s"] and ddp["tokens_per_s"] else None
        report[allocator] = {
            "ddp": ddp, "fsdp2": fsdp,
            "memory_ratio": round(memory, 3), "memory_met": memory <= MEMORY_TARGET, "state_ratio": round(state, 3),
            "throughput_ratio": round(speed, 3) if speed else None,
            "throughput_met": speed is not None and speed >= THROUGHPUT_TARGET,
        }  # fmt: skip
    allocators = args.allocators.split(",")
    report["both_met_by"] = [a for a in allocators if report[a]["memory_met"] and report[a]["throughput_met"]]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
