"""``python -m lit_psion receipts verify RUN_DIR``: check a run's receipt chain (and its consolidated models' log)."""

from __future__ import annotations

import json
from pathlib import Path

from lit_psion.commands import CommandParser
from lit_psion.core import RunLayout, RunRecord
from lit_psion.core.audit import check_chain, consolidation_log
from lit_psion.core.chain import log_lines, parse_receipt, torn_tail, verify_log
from lit_psion.core.checkpoint import CONSOLIDATION_PREFIX
from lit_psion.core.digest import sha256_file
from lit_psion.core.errors import ConfigError, EvidenceError, LockedError
from lit_psion.core.layout import RECEIPTS_FILE, RUN_FILE, not_a_run
from lit_psion.core.lock import lock_holder
from lit_psion.core.run import RUN_ID_ENV


def run_layout(run_dir: Path) -> RunLayout:
    """The layout of ``run_dir``, refused in one line when it is not a run directory (a link to one is followed: these
    commands only read)."""
    layout = RunLayout.of(run_dir)
    if not layout.is_run() and (kind := kept_by_another_command(run_dir)) is not None:
        raise ConfigError(f"{str(run_dir)!r} is {kind}, not a fit's run directory")
    if not layout.is_run() and layout.receipts.is_file() and not layout.checkpoints.exists() and not (
            layout.run_file.exists() or layout.run_file.is_symlink()):  # fmt: skip
        again = "" if torn_tail(layout.receipts) else (f", or start it again in place with {RUN_ID_ENV}="
                                                        f"{layout.run_id} and the same fit command")  # fmt: skip
        raise EvidenceError(f"run {layout.run_id!r} was stopped as it started (its first receipts are written, its "
                            f"{layout.run_file.name} and any checkpoint are not): nothing of it needs keeping; delete "
                            f"{str(layout.run_dir)!r}{again}")  # fmt: skip
    if not layout.is_run() and (layout.receipts.is_file() or layout.checkpoints.is_dir()):
        what = "is not a file" if layout.run_file.exists() or layout.run_file.is_symlink() else "is missing"
        raise EvidenceError(f"run {layout.run_id!r} has receipts or checkpoints but no {layout.run_file.name} "
                            f"({str(layout.run_file)!r} {what}); restore it from a backup")  # fmt: skip
    if not layout.is_run():
        raise ConfigError(not_a_run(run_dir))
    layout.refuse_special_files()
    return layout


def kept_by_another_command(directory: Path) -> str | None:
    """What ``directory`` is, and the command that checks it, when it holds receipts without being a fit's run: a
    session's run, an adapter export or merge, consolidated copies, an adapter window (else None). Read as a run
    that stopped as it started, these were "nothing of it needs keeping; delete" it."""
    python = "python -m lit_psion"
    if directory.parent.name == "runs" and (directory.parent.parent / "meta.json").is_file():
        session = directory.parent.parent
        return (f"a run of session {session.name!r}; `{python} session verify --artifacts_root "
                f"{session.parent.parent} --session_id {session.name}` checks it (`receipts verify` its log)")
    if any((directory / name).exists() for name in ADAPTER_OUTPUTS):
        return (f"an adapter export's or merge's output; `{python} adapter inspect {directory}` checks it "
                "(`receipts verify` its log)")  # fmt: skip
    if directory.name == "consolidated" and RunLayout.of(directory.parent).is_run():
        return (f"the consolidated copies of run {directory.parent.name!r}; `{python} receipts verify "
                f"{directory.parent}` (or doctor) checks them with the run, `{python} ckpt verify "
                f"{directory}/step-NNNNNN` one copy")  # fmt: skip
    if _consolidation_log_outside_a_run(directory) is not None:
        return (f"a `ckpt consolidate --out` directory; `{python} ckpt verify {directory}/step-NNNNNN` checks a copy "
                "(`receipts verify` its log)")  # fmt: skip
    if _a_window(directory):
        return f"a window of an adapter window program; `{python} window verify {directory.parent.parent}` checks it"
    if (directory / "program.json").is_file():
        return f"an adapter window program; `{python} window verify {directory}` checks it"
    return None


def _a_window(directory: Path) -> bool:
    """Whether ``directory`` is a window of an adapter window program (``PROGRAM/windows/w-NNNN``)."""
    return directory.parent.name == "windows" and (directory.parent.parent / "program.json").is_file()


def refuse_a_live_run(layout: RunLayout, command: str) -> None:
    """A run a fit is writing changes under a check (its chain grows past the anchors just read, retention deletes
    checkpoints): refused, as doctor does, rather than reported as tampered with.

    Raises:
        LockedError: a process holds the run's lock (exit 8, naming it).
    """
    if (holder := lock_holder(layout.run_dir)) is not None:
        raise LockedError(f"run {layout.run_id!r} is being written by {holder.describe()}; its files change under a "
                          f"check: run {command} once that fit has finished")  # fmt: skip


def main(args: list[str]) -> None:
    parser = CommandParser("python -m lit_psion receipts")
    parser.add_argument("action", choices=["verify"])
    parser.add_argument("run_dir", type=Path, help="a run directory, or its consolidated/ directory")
    given = parser.parse_args(args).run_dir
    in_a_run = given.name == "consolidated" and RunLayout.of(given.parent).is_run()
    if not in_a_run and (log := _consolidation_log_outside_a_run(given)) is not None:  # `ckpt consolidate --out`'s
        result = verify_log(log, run_id=_first_run_id(log))
        if not result.ok:
            raise EvidenceError(f"{str(log)!r}: {result.describe()}")
        print(f"ok: {result.describe()} (the log of models consolidated from run "
              f"{_first_run_id(log).removeprefix(CONSOLIDATION_PREFIX)})")  # fmt: skip
        return
    if (log := _adapter_output_log(given)) is not None:
        if (holder := lock_holder(given)) is not None:  # an export or merge appending: its log grows under a check
            raise LockedError(f"{str(given)!r} is being written by {holder.describe()}; run receipts verify once it "
                              "has finished")  # fmt: skip
        result = verify_log(log, run_id=_first_run_id(log))
        if not result.ok:
            raise EvidenceError(f"{str(log)!r}: {result.describe()}")
        if not result.count:  # every export or merge appends its receipt once it has written its files
            raise EvidenceError(f"{str(log)!r} holds no receipt, but {str(given)!r} holds an export's or merge's "
                                "files: the log was emptied, or the command was killed before its receipt; restore "
                                "the log from a backup, or export (or merge) again into a new --out")  # fmt: skip
        print(f"ok: {result.describe()} (an adapter export's or merge's log; adapter inspect, or generate, checks its "
              "files)")  # fmt: skip
        return
    if _a_window(given) and (given / RECEIPTS_FILE).is_file():
        if (holder := lock_holder(given.parent.parent)) is not None:  # the coordinator appending: it grows
            raise LockedError(f"window program {str(given.parent.parent)!r} is being written by {holder.describe()}; "
                              "run receipts verify once it has finished")  # fmt: skip
        try:
            head = json.loads((given / "window.json").read_bytes())["receipts_head"]
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as error:
            raise EvidenceError(f"{str(given / 'window.json')!r} records no readable receipts head ({error}); "
                                f"window verify {given.parent.parent} says what else is wrong") from error  # fmt: skip
        result = verify_log(given / RECEIPTS_FILE, expected_head=head, run_id=f"window:{given.name}")
        if not result.ok:
            raise EvidenceError(f"{str(given / RECEIPTS_FILE)!r}: {result.describe()}")
        print(f"ok: {result.describe()} (an adapter window's log; window verify {given.parent.parent} checks it with "
              "the program)")  # fmt: skip
        return
    if (recorded := _session_run_record(given)) is not None:
        _verify_session_run(given, recorded)
        return
    if given.parent.name == "runs" and (given.parent.parent / "meta.json").is_file() and not (
            given / RUN_FILE).exists():  # fmt: skip
        raise EvidenceError(f"{str(given)!r} is a session run its session's meta.json does not record (one stopped "
                            "before its commit, or under way): the session holds none of it; delete it once no run "
                            "is under way (session verify checks the session)")  # fmt: skip
    run = RunLayout.of(given.parent) if in_a_run else None
    layout = run or run_layout(given)
    refuse_a_live_run(layout, "receipts verify")
    if run is None:
        result = check_chain(layout, RunRecord.load(layout))  # EvidenceError (exit 5) names the first problem
        print(f"ok: {result.describe()}")
    if run is not None or layout.consolidated.is_dir():  # the consolidated models' own log
        verdict = consolidation_log(layout)
        if not verdict.ok:
            raise EvidenceError(f"{str(layout.consolidated / RECEIPTS_FILE)!r}: {verdict.detail}")
        print(f"ok: {verdict.artifact}: {verdict.detail}")


def _session_run_record(directory: Path) -> dict[str, str] | None:
    """The file digests a session's ``meta.json`` records for ``directory`` when it is one of the session's runs
    (``sessions/<id>/runs/<run_id>/``, which has receipts but never a run.json), else None."""
    meta_file = directory.parent.parent / "meta.json"
    if directory.parent.name != "runs" or RunLayout.of(directory).is_run() or not meta_file.is_file():
        return None
    try:
        runs = json.loads(meta_file.read_bytes()).get("runs")
    except (OSError, ValueError, AttributeError):
        return None
    for run in runs if isinstance(runs, list) else ():
        if isinstance(run, dict) and run.get("run_id") == directory.name and isinstance(run.get("files"), dict):
            return run["files"]
    return None


def _verify_session_run(directory: Path, recorded: dict[str, str]) -> None:
    """A session run's log: its chain, from the run's genesis, and its bytes against the session's record."""
    log = directory / RECEIPTS_FILE
    if not log.is_file():
        raise EvidenceError(f"{str(log)!r} is missing; the session's meta.json records it (session verify checks "
                            "every file a session records)")  # fmt: skip
    result = verify_log(log, run_id=directory.name)
    if not result.ok:
        raise EvidenceError(f"{str(log)!r}: {result.describe()}")
    if (digest := sha256_file(log)) != recorded.get(RECEIPTS_FILE):
        raise EvidenceError(f"{str(log)!r} has sha256 {digest}, the session's meta.json records "
                            f"{recorded.get(RECEIPTS_FILE)}: the log was changed after the run ended")  # fmt: skip
    print(f"ok: {result.describe()} (a session run; its other files: session verify)")


def _consolidation_log_outside_a_run(directory: Path) -> Path | None:
    """``directory``'s receipt log when it is not a run's but the log ``ckpt consolidate --out`` leaves (its
    receipts belong to ``consolidate-<run id>``), else None."""
    log = directory / RECEIPTS_FILE
    if RunLayout.of(directory).is_run() or not log.is_file():
        return None
    run_id = _first_run_id(log)
    return log if run_id is not None and run_id.startswith(CONSOLIDATION_PREFIX) else None


ADAPTER_OUTPUTS = ("adapter.json", "merge.json")
"""What `adapter export` and `adapter merge` leave beside their receipt log (lit_psion.adapters)."""


def _adapter_output_log(directory: Path) -> Path | None:
    """``directory``'s receipt log when it is an adapter export's or merge's (no run.json, an ``adapter.json`` or
    ``merge.json`` beside the log, every receipt an ``adapter_export``), else None."""
    log = directory / RECEIPTS_FILE
    outputs = any((directory / name).is_file() for name in ADAPTER_OUTPUTS)
    if RunLayout.of(directory).is_run() or not log.is_file() or not outputs:
        return None
    try:
        kinds = {parse_receipt(line).kind for line in log_lines(log.read_text(encoding="utf-8")) if line.strip()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return log  # verify_log names what is wrong with it
    return log if kinds <= {"adapter_export"} else None


def _first_run_id(log: Path) -> str | None:
    try:
        with open(log, encoding="utf-8") as handle:
            return parse_receipt(handle.readline()).run_id
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
