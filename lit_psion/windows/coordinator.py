"""One machine's engine: ``window run`` plans a window, starts one contributor process per assignment, and
closes the window (seal, dispositions, aggregation, promotion) when they are done or the deadline passes.

Every command that writes the program (plan, open, close, run) holds the program root's lock, so two
coordinators never interleave; contributors only add their own submission directories.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lit_psion.core.errors import ConfigError, LitPsionError
from lit_psion.core.lock import RunLock
from lit_psion.core.text import shell_words
from lit_psion.core.windows import ACTIVE, PLANNED, SCORED, SEALED
from lit_psion.windows.aggregate import reconcile
from lit_psion.windows.program import Program, plan_window
from lit_psion.windows.validate import score, seal


def program_lock(root: Path, purpose: str) -> RunLock:
    return RunLock(root, purpose=purpose)


def open_window(root: Path, window_id: str) -> None:
    """planned -> active: contributions are taken from now until the seal."""
    program = Program(root)
    plan = program.plan(window_id)
    program.transition(window_id, ACTIVE, {"dispatched": {a.assignment_id: a.contributor for a in plan.assignments}})


def close_window(root: Path, window_id: str) -> dict[str, Any]:
    """Take the window from wherever it is (planned, active, sealed or scored) to reconciled; the promotion record.

    A planned window is abandoned: it opens with nothing dispatched, so every assignment ends replay_required.
    """
    program = Program(root)
    if window_id not in (windows := program.window_ids()):  # as open and contribute say it; not "incomplete"
        raise ConfigError(f"no window {window_id!r} in {str(program.root)!r} (windows: {', '.join(windows) or 'none'})")
    if program.state(window_id) == PLANNED:
        open_window(root, window_id)  # nothing was dispatched: every assignment ends replay_required
    if program.state(window_id) == ACTIVE:
        seal(root, window_id)
    if program.state(window_id) == SEALED:
        score(root, window_id)
    if program.state(window_id) == SCORED:
        return reconcile(root, window_id)
    from lit_psion.core.windows import WindowStateError

    raise WindowStateError(f"{window_id} is already {program.state(window_id)!r}; plan the next window")


def contributor_command(root: Path, window_id: str, assignment_id: str) -> list[str]:
    return [sys.executable, "-m", "lit_psion", "window", "contribute", str(root), window_id, assignment_id]


def run_window(root: Path, contributors: int | None = None, deadline: float | None = None,
               echo: bool = True) -> dict[str, Any]:  # fmt: skip
    """Plan, open, contribute (one process per assignment), close. A contributor still running at ``deadline``
    seconds is killed: its slice is ``replay_required`` and the next window reassigns it."""
    with program_lock(root, "window run"):
        plan = plan_window(root, contributors)
        window_id = plan.window_id
        open_window(root, window_id)
        logs = Program(root).window_dir(window_id) / "logs"
        logs.mkdir(exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        started = time.monotonic()
        processes = {}
        for assignment in plan.assignments:
            with open(logs / f"{assignment.assignment_id}.log", "wb") as log:
                processes[assignment.assignment_id] = subprocess.Popen(
                    contributor_command(root, window_id, assignment.assignment_id), stdout=log,
                    stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
        if echo:
            print(f"{window_id}: {len(processes)} contributor(s) training on revision {plan.input_revision[:12]}...")
        previous = signal.signal(signal.SIGTERM, _terminated)  # (the default ended the coordinator alone)
        try:
            exit_codes = _wait(processes, None if deadline is None else started + deadline)
        except BaseException as error:  # Ctrl-C, SIGTERM or an error here: no contributor outlives its coordinator
            for process in processes.values():
                _kill(process)
            if isinstance(error, KeyboardInterrupt | _Terminated):
                raise WindowRunStopped(
                    f"window run stopped by {'SIGTERM' if isinstance(error, _Terminated) else 'Ctrl-C'} while "
                    f"{window_id} trained: its contributors were stopped; the window is open: close it (python -m "
                    f"lit_psion window close {shell_words(root, window_id)}), whose unfinished slices the next "
                    "window replays",
                    143 if isinstance(error, _Terminated) else 130) from None  # fmt: skip
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        if failed := {aid: code for aid, code in exit_codes.items() if code not in (0, -signal.SIGKILL)}:
            for aid, code in sorted(failed.items()):
                print(f"lit_psion: warning: contributor {aid} exited {code}: {logs / f'{aid}.log'}", file=sys.stderr)
        train_s = time.monotonic() - started
        clock = time.monotonic()
        seal(root, window_id)
        dispositions = score(root, window_id)
        validate_s = time.monotonic() - clock
        clock = time.monotonic()
        promotion = reconcile(root, window_id)
        aggregate_s = time.monotonic() - clock
    counts: dict[str, int] = {}
    for entry in dispositions["assignments"].values():
        counts[entry["disposition"]] = counts.get(entry["disposition"], 0) + 1
    result = {**promotion, "dispositions": counts, "exit_codes": exit_codes,
              "seconds": {"train": train_s, "validate": validate_s, "aggregate": aggregate_s}}  # fmt: skip
    if echo:
        scores = promotion["scores"]
        after = f"{scores['candidate_loss']:.4f}" if "candidate_loss" in scores else "no candidate"
        print(f"{window_id}: {', '.join(f'{n} {d}' for d, n in sorted(counts.items()))}; {promotion['decision']} "
              f"(gate loss {scores['input_loss']:.4f} -> {after}"
              f"{', ' + ', '.join(promotion['reasons']) if promotion['reasons'] else ''})")  # fmt: skip
    return result


class _Terminated(BaseException):
    """SIGTERM to a window run's coordinator, raised where it waits for its contributors."""


def _terminated(signum: int, frame: Any) -> None:
    raise _Terminated


class WindowRunStopped(LitPsionError):
    """``window run`` stopped by a signal, its contributors with it (exit 130 for Ctrl-C, 143 for SIGTERM)."""

    failure_class = "interrupted"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _wait(processes: dict[str, subprocess.Popen], until: float | None) -> dict[str, int]:
    """Each contributor's exit code; those still running at ``until`` are killed (their code is -9)."""
    codes = {}
    for assignment_id, process in processes.items():
        try:
            codes[assignment_id] = process.wait(None if until is None else max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[assignment_id] = _kill(process)
    return codes


def _kill(process: subprocess.Popen) -> int:
    """Kill a contributor's whole process group; its exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait()
