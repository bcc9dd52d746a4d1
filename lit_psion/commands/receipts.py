"""``python -m lit_psion receipts verify RUN_DIR``: check a run's receipt chain, print one line."""

from __future__ import annotations

from pathlib import Path

from lit_psion.commands import CommandParser
from lit_psion.core import RunLayout, RunRecord
from lit_psion.core.audit import check_chain
from lit_psion.core.errors import ConfigError


def run_layout(run_dir: Path) -> RunLayout:
    """The layout of ``run_dir``, refused in one line when it is not a run directory."""
    layout = RunLayout.of(run_dir)
    if not layout.is_run():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no {layout.run_file.name}); give <root>/<run_id>")
    return layout


def main(args: list[str]) -> None:
    parser = CommandParser("python -m lit_psion receipts")
    parser.add_argument("action", choices=["verify"])
    parser.add_argument("run_dir", type=Path)
    layout = run_layout(parser.parse_args(args).run_dir)
    result = check_chain(layout, RunRecord.load(layout))  # EvidenceError (exit 5) names the first problem
    print(f"ok: {result.describe()}")
