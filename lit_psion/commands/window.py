"""``python -m lit_psion window init|plan|open|contribute|close|run|status|verify`` (docs/windows.md)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

from lit_psion.commands import CommandParser
from lit_psion.core.errors import ConfigError
from lit_psion.core.layout import refuse_output_in_a_run
from lit_psion.core.lock import LOCK_FILE
from lit_psion.core.text import shell_words


def main(args: list[str]) -> None:
    parser = CommandParser("python -m lit_psion window")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", exit_on_error=False, help="create a window program from a verified base")
    init.add_argument("root", type=Path, help="the window program's directory to make (new or empty)")
    init.add_argument("--config", type=Path, required=True, help="window settings (configs/window_lora.yaml)")
    init.add_argument("--base", type=Path, required=True, help="the base run directory or checkpoint directory")
    init.add_argument("--data.files", dest="data_files", nargs="+", default=None, metavar="FILE",
                      help="the program's text, in place of the config's data.files (paths or globs)")  # fmt: skip
    plan = commands.add_parser("plan", exit_on_error=False, help="plan the next window from the current revision")
    plan.add_argument("root", type=Path, help="the window program's directory (window init makes it)")
    plan.add_argument("--contributors", type=int, default=None, help="assignments in the window, one slice each "
                      "(default: the program's config)")  # fmt: skip
    open_ = commands.add_parser("open", exit_on_error=False, help="open a planned window to contributions")
    open_.add_argument("root", type=Path, help="the window program's directory (window init makes it)")
    open_.add_argument("window_id")
    contribute = commands.add_parser("contribute", exit_on_error=False, help="train and submit one assignment")
    contribute.add_argument("root", type=Path, help="the window program's directory (window init makes it)")
    contribute.add_argument("window_id")
    contribute.add_argument("assignment_id")
    contribute.add_argument("--contributor", default=None, help="who is contributing (default: the assignee)")
    close = commands.add_parser("close", exit_on_error=False, help="seal, score, aggregate and promote or hold")
    close.add_argument("root", type=Path, help="the window program's directory (window init makes it)")
    close.add_argument("window_id")
    run = commands.add_parser("run", exit_on_error=False, help="plan, contribute (one process each) and close")
    run.add_argument("root", type=Path, help="the window program's directory (window init makes it)")
    run.add_argument("--contributors", type=int, default=None, help="assignments in each window, one process each "
                     "(default: the program's config)")  # fmt: skip
    run.add_argument("--windows", type=int, default=1, help="run this many windows one after another")
    run.add_argument("--deadline", type=float, default=None, help="seconds before unfinished contributors are killed")
    status = commands.add_parser("status", exit_on_error=False, help="the program's windows and revision")
    status.add_argument("root", type=Path, help="the window program's directory (window init makes it)")
    verify = commands.add_parser("verify", exit_on_error=False, help="verify every window's receipts and revisions")
    verify.add_argument("root", type=Path, help="the window program's directory (window init makes it)")
    parsed = parser.parse_args(args)
    _checked(parser, parsed)
    if parsed.command in ("plan", "open", "contribute", "close", "run", "status"):
        from lit_psion.windows.program import Program

        Program(parsed.root).require()  # (here, before the engine's imports: torch takes seconds)
    getattr(_Commands, parsed.command)(parsed)


def _checked(parser: CommandParser, parsed: object) -> None:
    from lit_psion.core.windows import ASSIGNMENT_ID, WINDOW_ID

    window_id, assignment_id = getattr(parsed, "window_id", None), getattr(parsed, "assignment_id", None)
    if window_id is not None and not WINDOW_ID.fullmatch(window_id):
        parser.error_in(parsed, f"window id {window_id!r} is not one: window ids are w-NNNN (window status ROOT lists "
                        "them)")  # fmt: skip
    if assignment_id is not None and not ASSIGNMENT_ID.fullmatch(assignment_id):
        parser.error_in(parsed, f"assignment id {assignment_id!r} is not one: assignment ids are aNN (window plan "
                        "prints them)")  # fmt: skip
    for name in ("contributors", "windows"):
        value = getattr(parsed, name, None)
        if value is not None and value < 1:
            parser.error_in(parsed, f"--{name} must be >= 1, got {value}")
    deadline = getattr(parsed, "deadline", None)
    if deadline is not None and not deadline > 0:
        parser.error_in(parsed, f"--deadline must be > 0 seconds, got {deadline}")


class _Commands:
    @staticmethod
    def init(parsed: object) -> None:
        from lit_psion.windows.settings import load_settings

        settings = load_settings(parsed.config)  # (before torch is imported: a bad config is said at once)
        from lit_psion.windows.coordinator import program_lock
        from lit_psion.windows.founding import init_program

        if parsed.data_files is not None:  # (a relative path in the config is read from where init runs)
            files = parsed.data_files[0] if len(parsed.data_files) == 1 else parsed.data_files
            settings = dataclasses.replace(settings, data={**settings.data, "files": files})
        if parsed.root.exists() and not parsed.root.is_dir():
            raise ConfigError(f"program root {str(parsed.root)!r} is a file; give a directory (created if missing)")
        refuse_output_in_a_run(parsed.root, flag="window init's root")  # (inside a checkpoint too: before its lock)
        created = not parsed.root.exists()
        parsed.root.mkdir(parents=True, exist_ok=True)
        try:
            with program_lock(parsed.root, "window init"):
                record = init_program(parsed.root, settings, parsed.base)
        except BaseException:
            if created and {p.name for p in parsed.root.iterdir()} <= {LOCK_FILE}:
                shutil.rmtree(parsed.root, ignore_errors=True)  # a refused init leaves nothing behind
            raise
        print(f"window program in {parsed.root}: revision 0 is {record['revision'][:12]}... "
              f"(base {record['base'][:12]}...)")

    @staticmethod
    def plan(parsed: object) -> None:
        from lit_psion.windows.coordinator import program_lock
        from lit_psion.windows.program import plan_window

        with program_lock(parsed.root, "window plan"):
            plan = plan_window(parsed.root, parsed.contributors)
        print(f"{plan.window_id} planned: {len(plan.assignments)} assignment(s) on revision "
              f"{plan.input_revision[:12]}...")
        _warn_unchecked_norms(len(plan.assignments))
        for a in plan.assignments:
            replay = f" (replays {a.replay_of})" if a.replay_of else ""
            print(f"  {a.assignment_id} {a.contributor:<6} slice {a.slice.index} "
                  f"[{a.slice.start}, {a.slice.stop}){replay}")

    @staticmethod
    def open(parsed: object) -> None:
        from lit_psion.windows.coordinator import open_window, program_lock

        with program_lock(parsed.root, "window open"):
            open_window(parsed.root, parsed.window_id)
        print(f"{parsed.window_id} is active: contributors may submit")

    @staticmethod
    def contribute(parsed: object) -> None:
        from lit_psion.windows.contribute import contribute

        path = contribute(parsed.root, parsed.window_id, parsed.assignment_id, parsed.contributor)
        print(f"submitted {path}")

    @staticmethod
    def close(parsed: object) -> None:
        from lit_psion.windows.coordinator import close_window, program_lock

        with program_lock(parsed.root, "window close"):
            promotion = close_window(parsed.root, parsed.window_id)
        print(f"{parsed.window_id}: {promotion['decision']} ({', '.join(promotion['reasons']) or 'held-out gain'}); "
              f"next revision {promotion['next_revision'][:12]}...")  # fmt: skip

    @staticmethod
    def run(parsed: object) -> None:
        from lit_psion.windows.coordinator import run_window
        from lit_psion.windows.program import Program

        _warn_unchecked_norms(parsed.contributors or Program(parsed.root).settings().contributors)
        for _ in range(parsed.windows):
            run_window(parsed.root, parsed.contributors, parsed.deadline)
        print(f"receipts and dispositions under {parsed.root / 'windows'}; "
              f"python -m lit_psion window status {shell_words(parsed.root)}")

    @staticmethod
    def status(parsed: object) -> None:
        from lit_psion.windows.status import program_status

        print(json.dumps(program_status(parsed.root), indent=2))

    @staticmethod
    def verify(parsed: object) -> None:
        from lit_psion.windows.status import verify_program

        checked = verify_program(parsed.root)
        print(f"verified {checked['windows']} window(s), {checked['receipts']} receipt(s); pointer at revision "
              f"{checked['revision'][:12]}...")  # fmt: skip


def _warn_unchecked_norms(contributors: int) -> None:
    """Below three contributions the validator's delta-norm check judges nothing: say so where the count is chosen."""
    from lit_psion.core.windows import NORM_CHECK_MIN

    if contributors < NORM_CHECK_MIN:
        print(f"lit_psion: warning: {contributors} contributor{'s' if contributors != 1 else ''} a window: the "
              f"validator's delta-norm check needs {NORM_CHECK_MIN} contributions, so a scaled or empty delta is "
              "caught only by the held-out regression check (docs/windows.md)", file=sys.stderr)  # fmt: skip
