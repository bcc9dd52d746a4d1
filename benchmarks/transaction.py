"""Cost of a transactional step: ``TransactionalStrategy`` against Lightning's default strategy.

Every side is ``fit`` through the real CLI on ``configs/decoder_tiny.yaml`` (DecoderLM, Muon),
the same batches, receipts and telemetry on, checkpoints off. The transactional sides use
``buffer_len`` 1 (the current batch: a snapshot of parameters and optimizer state, the step, and
one extra forward without backward for ``post_loss``) and ``buffer_len`` 4 (the current batch and
the last 3 committed ones: 4 forwards for ``post_loss``; ``pre_loss`` on the committed ones is
the previous step's ``post_loss`` when the weights have not changed since). Steady-state steps
only, alternating rounds.

    LIT_PSION_CACHE=/tmp/lpcache python benchmarks/transaction.py
    LIT_PSION_CACHE=/tmp/lpcache python benchmarks/transaction.py --steps 20 --warmup 5 --rounds 1   # smoke

The last line of stdout is one JSON object; ``ratio`` is the transactional step time over the
plain step time at ``buffer_len`` 1 (median over rounds of adjacent runs; target <= 1.35), and
``ratio_buffer_len_4`` the same at ``buffer_len`` 4.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import REPO, run_lit_psion

TARGET = 1.35
def transactional(buffer_len: int) -> tuple[str, ...]:
    return ("--trainer.strategy", "lit_psion.strategies.TransactionalStrategy", "--trainer.strategy.policy.buffer_len",
            str(buffer_len))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "decoder_tiny.yaml")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--files", help="override the preset's data.files")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    times: dict[str, list[float]] = {"plain": [], "tx1": [], "tx4": []}
    with tempfile.TemporaryDirectory(prefix="lit_psion_transaction_") as tmp:
        for index in range(args.rounds):
            sides = [("plain", ()), ("tx1", transactional(1)), ("tx4", transactional(4))]
            for name, extra in sides if index % 2 == 0 else sides[::-1]:
                clock, _ = run_lit_psion(args, Path(tmp) / f"{name}{index}", extra=extra)
                times[name].append(statistics.median(clock.step_seconds))
            done = ", ".join(f"{name} {seconds[-1] * 1000:.1f} ms" for name, seconds in times.items())
            print(f"round {index}: {done}", file=sys.stderr)

    def ratio(name: str) -> float:
        return statistics.median(t / p for t, p in zip(times[name], times["plain"], strict=True))

    print(json.dumps({
        "benchmark": "transaction",
        "ratio": round(ratio("tx1"), 4),
        "target": TARGET,
        "meets_target": ratio("tx1") <= TARGET,
        "ratio_buffer_len_4": round(ratio("tx4"), 4),
        "statistic": "median step time, transactional / plain; median over rounds of adjacent runs",
        "plain_step_ms": [round(s * 1000, 2) for s in times["plain"]],
        "transactional_step_ms": [round(s * 1000, 2) for s in times["tx1"]],
        "transactional_buffer_len_4_step_ms": [round(s * 1000, 2) for s in times["tx4"]],
        "config": str(args.config),
        **{key: getattr(args, key) for key in ("steps", "warmup", "rounds", "batch_size", "block_size")},
        "threads": torch.get_num_threads(),
        "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
