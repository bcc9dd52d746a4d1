"""``python -m lit_psion ckpt verify RUN_DIR``: the checkpoint a resume would use, verified."""

from __future__ import annotations

import sys
from pathlib import Path

from lit_psion.commands import CommandParser
from lit_psion.commands.receipts import run_layout
from lit_psion.core.audit import receipted_checkpoints
from lit_psion.core.checkpoint import RejectedCheckpoint, resolve_checkpoint


def main(args: list[str]) -> None:
    parser = CommandParser("python -m lit_psion ckpt")
    parser.add_argument("action", choices=["verify"])
    parser.add_argument("run_dir", type=Path)
    rejected: list[RejectedCheckpoint] = []
    layout = run_layout(parser.parse_args(args).run_dir)
    checkpoint = resolve_checkpoint(layout, rejected, quiet=True, receipted=receipted_checkpoints(layout))
    for skipped in rejected:
        print(f"lit_psion: warning: skipped {skipped.path.name}: {skipped.reason}", file=sys.stderr)
    print(f"ok: {checkpoint.path} matches its manifest (what --ckpt_path last loads)")
