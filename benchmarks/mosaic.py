"""MOSAIC on its event traces: training loss against wall time and tokens for the CPU preset.

Runs ``configs/mosaic_commitment_cpu.yaml`` through the real CLI and records, after every step, the
seconds since the first step started, the tokens trained on and the training loss (next-token +
0.1 opcode + 0.1 commitment, the objective the seed's Phase 1 reported as 0.36). The time and
tokens to reach 0.36 use the mean over a 10-step window. Target: <= 0.36 within 600 s on 2 cores.

    LIT_PSION_CACHE=/tmp/lpcache python benchmarks/mosaic.py
    LIT_PSION_CACHE=/tmp/lpcache python benchmarks/mosaic.py --steps 50      # smoke

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lit_psion.cli import LitPsionCLI

REPO = Path(__file__).resolve().parent.parent
PHASE1_LOSS, BUDGET_S, WINDOW = 0.36, 600.0, 10


class Curve(Callback):
    def __init__(self) -> None:
        self.points: list[dict[str, float]] = []
        self.start: float | None = None
        self.tokens = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           idx: int) -> None:  # fmt: skip
        self.tokens += batch["input_ids"].numel()
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        self.points.append({"step": trainer.global_step, "seconds": time.perf_counter() - self.start,
                            "tokens": self.tokens, "loss": loss})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "mosaic_commitment_cpu.yaml")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's max_steps")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    curve = Curve()
    with tempfile.TemporaryDirectory(prefix="lit_psion_mosaic_") as tmp:
        cli_args = ["fit", "--config", str(args.config), "--trainer.default_root_dir", tmp,
                    "--progress_bar.refresh_rate", "0", "--trainer.enable_model_summary", "false",
                    *(["--trainer.max_steps", str(args.steps)] if args.steps else [])]  # fmt: skip
        argv, sys.argv = sys.argv, sys.argv[:1]
        try:
            with contextlib.redirect_stdout(sys.stderr):
                cli = LitPsionCLI(args=cli_args, callbacks=[curve])
        finally:
            sys.argv = argv
        val = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    points = curve.points
    smoothed = [statistics.fmean(p["loss"] for p in points[max(0, i - WINDOW + 1) : i + 1]) for i in range(len(points))]
    reached = next((i for i, loss in enumerate(smoothed) if i >= WINDOW - 1 and loss <= PHASE1_LOSS), None)
    seconds = points[reached]["seconds"] if reached is not None else None
    print(json.dumps({
        "benchmark": "mosaic",
        "final_train_loss_window": round(smoothed[-1], 4),
        "seconds_to_0_36": round(seconds, 1) if seconds is not None else None,
        "tokens_to_0_36": points[reached]["tokens"] if reached is not None else None,
        "step_to_0_36": points[reached]["step"] if reached is not None else None,
        "target": f"train loss <= {PHASE1_LOSS} within {BUDGET_S:.0f} s",
        "meets_target": seconds is not None and seconds <= BUDGET_S,
        "total_seconds": round(points[-1]["seconds"], 1),
        "total_tokens": points[-1]["tokens"],
        "val": {k: round(v, 4) for k, v in sorted(val.items())},
        "curve": [{k: round(v, 3) for k, v in points[i].items()} | {"loss_window": round(smoothed[i], 4)}
                  for i in range(0, len(points), max(1, len(points) // 20))],
        "config": str(args.config),
        "threads": torch.get_num_threads(),
        "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
