"""What the window tests share: the small program settings, making a program, reading its receipts."""

from __future__ import annotations

import json
from pathlib import Path

from lit_psion.cli import main
from lit_psion.core.chain import parse_receipt
from lit_psion.windows.program import Program

SETTINGS = {
    "contributors": 4,
    "slice_samples": 16,
    "data": {"files": "fixtures/tiny_corpus.txt", "block_size": 32, "split": "tail", "val_fraction": 0.1,
             "sample_stride": 16},
    "lora": {"targets": ["lm_head"], "rank": 4, "alpha": 8.0},
    "budget": {"steps": 8, "batch_size": 8, "lr": 0.02},
    "validator": {"norm_factor": 4.0, "max_regression": 0.01},
    "gate": {"min_delta": 0.0},
}


def write_settings(path: Path, **changes: object) -> Path:
    path.write_text(json.dumps({"window": {**SETTINGS, **changes}}))
    return path


def new_program(base: Path, root: Path, **changes: object) -> Path:
    settings = write_settings(root.parent / f"{root.name}.yaml", **changes)
    assert main(["window", "init", str(root), "--config", str(settings), "--base", str(base)]) == 0
    return root


def receipts(program: Program, window_id: str) -> list:
    lines = (program.window_dir(window_id) / "receipts.jsonl").read_text().splitlines()
    return [parse_receipt(line) for line in lines]
