"""``python -m lit_psion ckpt verify RUN_DIR``: the checkpoint a resume would use, verified."""

from __future__ import annotations

import argparse
from pathlib import Path

from lit_psion.commands.receipts import run_layout
from lit_psion.core.checkpoint import resolve_checkpoint


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_psion ckpt", exit_on_error=False)
    parser.add_argument("action", choices=["verify"])
    parser.add_argument("run_dir", type=Path)
    checkpoint = resolve_checkpoint(run_layout(parser.parse_args(args).run_dir))
    print(f"ok: {checkpoint.path} matches its manifest")
