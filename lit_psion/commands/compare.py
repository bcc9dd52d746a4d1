"""``python -m lit_psion compare RUN_DIR [RUN_DIR ...] [--out DIR]``: config diff, final metrics, plots."""

from __future__ import annotations

from pathlib import Path

from rich.table import Column, Table

from lit_psion.commands import CommandParser
from lit_psion.core.errors import EvidenceError
from lit_psion.core.layout import refuse_output_in_a_run
from lit_psion.report import PipedConsole, at_step, compare


def main(args: list[str]) -> None:
    parser = CommandParser("python -m lit_psion compare")
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, default=Path("compare"), help="where the PNGs and index.html go")
    parsed = parser.parse_args(args)
    refuse_output_in_a_run(parsed.out)
    result = compare(parsed.run_dirs, parsed.out)
    labels = result["labels"]
    console = PipedConsole(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # a pipe or a file: 80 columns would fold every cell of a wide comparison
        console = PipedConsole(highlight=False, soft_wrap=True, width=max(80, 48 + 24 * len(labels)))
    diff = Table(Column("config key", overflow="fold"), *labels, title="config differences")
    for key, values in result["config_diff"]:
        diff.add_row(key, *(str(v) for v in values))
    console.print(diff if result["config_diff"] else "configs are identical")
    finals = Table("metric", *labels, title="final metrics")
    for key in result["metrics"]:
        finals.add_row(key, *(at_step(result["final"][label].get(key), result["final_steps"][label].get(key))
                              for label in labels))  # fmt: skip
    for field in ("status", "global_step", "receipts", "receipts_head", "checkpoint"):  # (records FAIL: a file the
        finals.add_row(field, *(str(facts[field]).split(":")[0][:22] for facts in result["evidence"]))  # chain binds)
    console.print(finals)
    console.print(f"overlay plots: {result['page']}")
    for run, facts in zip(parsed.run_dirs, result["evidence"], strict=True):
        if "FAIL" in facts["receipts"]:  # compared all the same, and said: its numbers are not vouched for
            said = ("its receipts do not verify, so its row above is not vouched for" if facts["chain_fails"] else
                    "its receipts verify, but a record its column shows is not what they vouch for")  # fmt: skip
            raise EvidenceError(f"{run}: {said}: {facts['receipts'].split('FAIL', 1)[1].lstrip('S').lstrip(': ')}")
