"""Adapter (LoRA) fine-tuning against full fine-tuning of the same model: step time, peak memory, trainable share.

Each side runs in its own process (so peak resident memory is its own): the decoder_tiny-sized
DecoderLM network, the same random token batches, AdamW, ``--steps`` steps, the median step
time after ``--warmup``. The adapter side freezes the base and trains LoRA (rank 8, alpha 16)
on ``--targets``.

    python benchmarks/adapter.py
    python benchmarks/adapter.py --targets lm_head attn_qkv attn_out --steps 20   # another target set

The last line of stdout is one JSON object with the ratios (adapter / full).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from lit_psion.nn.decoder import Decoder, DecoderConfig
from lit_psion.nn.lora import adapter_params, inject_lora


def run_side(side: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(vocab_size=2048, block_size=128, n_layer=4, n_head=4, d_model=128))
    total = sum(p.numel() for p in model.parameters())
    if side == "adapter":
        model.requires_grad_(False)
        inject_lora(model, args.targets, rank=8, alpha=16.0)
        params = adapter_params(model)
    else:
        params = [p for p in model.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(2048, (16, 129), generator=generator) for _ in range(4)]
    times = []
    for step in range(args.steps):
        tokens = batches[step % len(batches)]
        start = time.perf_counter()
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    trainable = sum(p.numel() for p in params)
    return {"side": side, "median_step_ms": statistics.median(times[args.warmup :]) * 1000,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainable_params": trainable, "total_params": total}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--targets", nargs="+", default=["lm_head"])
    parser.add_argument("--side", choices=["full", "adapter"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args)))
        return
    load_before = os.getloadavg()[0]
    results = {}
    for side in ("full", "adapter"):
        command = [sys.executable, __file__, "--side", side, "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--targets", *args.targets]  # fmt: skip
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[side] = json.loads(output.strip().splitlines()[-1])
    full, adapter = results["full"], results["adapter"]
    print(json.dumps({
        "benchmark": "adapter",
        "targets": args.targets,
        "step_time_ratio": round(adapter["median_step_ms"] / full["median_step_ms"], 4),
        "peak_memory_ratio": round(adapter["peak_rss_mb"] / full["peak_rss_mb"], 4),
        "trainable_share": round(adapter["trainable_params"] / adapter["total_params"], 6),
        "full": {k: round(v, 2) if isinstance(v, float) else v for k, v in full.items()},
        "adapter": {k: round(v, 2) if isinstance(v, float) else v for k, v in adapter.items()},
        "statistic": "adapter / full; median step time after warmup; peak RSS of each side's own process",
        "steps": args.steps, "warmup": args.warmup, "threads": torch.get_num_threads(),
        "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
