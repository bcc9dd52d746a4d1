"""``python -m lit_psion session init-base|new|fork|run|list|show [--artifacts_root DIR] ...``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lit_psion.commands import CommandParser, underway
from lit_psion.core.digest import sha256_file
from lit_psion.core.errors import CheckpointError, ConfigError, EvidenceError, LockedError
from lit_psion.core.layout import RECEIPTS_FILE, in_a_run
from lit_psion.core.lock import lock_holder
from lit_psion.core.policy import TransactionPolicy
from lit_psion.core.text import shell_words
from lit_psion.sessions.registry import registry_problem
from lit_psion.sessions.run_binding import UNBOUND, binding_problem
from lit_psion.sessions.settings import MAX_SEED, MAX_STEPS, WorldConfig, fork_copies_optimizer
from lit_psion.sessions.store import (
    BASE_CHECKPOINT,
    MU_MAX,
    OPTIM,
    PLASTIC,
    SETTINGS,
    Store,
    is_plain_name,
)


def _flag(value: str) -> bool:
    if value not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected 0 or 1, got {value!r}")
    return value == "1"


def _seed(value: str) -> int:
    """A seed: a whole number numpy's seeding takes (Lightning's seed_everything seeds numpy with it)."""
    try:
        seed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must be in [0, {MAX_SEED}] (2**32 - 1), got {value}")
    return seed


def _optimizer_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lr", type=float, default=0.005, help="Muon learning rate")
    parser.add_argument("--momentum", type=float, default=0.95)
    parser.add_argument("--ns_steps", type=int, default=5, help="Newton-Schulz iterations")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m lit_psion session",
                                     description="Branching online-learning sessions (docs/sessions.md).")  # fmt: skip
    commands_ = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        sub = commands_.add_parser(name, help=help_, exit_on_error=False)
        sub.add_argument("--artifacts_root", default="artifacts", help="where base/ and sessions/ live")
        return sub

    init = command("init-base", "pretrain the base world model on the base environment")
    init.add_argument("--pretrain_steps", type=int, default=500)
    init.add_argument("--pretrain_batch", type=int, default=32)
    init.add_argument("--pretrain_seq", type=int, default=32)
    init.add_argument("--env_mode", default="linear", choices=["linear"])
    init.add_argument("--u_dim", type=int, default=16)
    init.add_argument("--n_state", type=int, default=32)
    init.add_argument("--env_seed", type=_seed, default=0, help="draws the base environment and the drift direction")
    init.add_argument("--seed", type=_seed, default=0)
    _optimizer_flags(init)

    new = command("new", "create a session on a drifted environment")
    new.add_argument("--session_id", required=True)
    new.add_argument("--mu", type=float, default=0.12, help="drift size: spectral norm of the change to A and B")
    new.add_argument("--env_mode", default="linear", choices=["linear"])
    _optimizer_flags(new)
    new.add_argument("--chunk", type=int, default=32, help="transitions per update")
    new.add_argument("--buffer_len", type=int, default=32, help="transitions the rollback test measures")
    new.add_argument(
        "--gate_chunks",
        type=int,
        default=2,
        help="promote the learner's weights when they predicted the last N chunks better (0: no gate)",
    )
    policy = TransactionPolicy()
    new.add_argument("--rollback_tol", type=float, default=policy.rollback_tol, help="see docs/transactions.md")
    new.add_argument("--grad_norm_max", type=float, default=policy.grad_norm_max)
    new.add_argument("--state_norm_max", type=float, default=policy.state_norm_max)

    fork = command("fork", "branch a session: same plastic weights, copied or fresh optimizer")
    fork.add_argument("--parent_session_id", required=True)
    fork.add_argument("--child_session_id", required=True)
    fork.add_argument("--copy_optimizer", type=_flag, default=None, help="1: keep the parent's momentum (default)")
    fork.add_argument("--reset_optimizer", type=_flag, default=None, help="1: start the optimizer fresh")

    run = command("run", "run a session online")
    run.add_argument("--session_id", required=True)
    run.add_argument("--steps", type=int, default=600, help="environment transitions (default: 600)")
    run.add_argument("--seed", type=_seed, default=1, help="draws the session's trajectory")

    verify = command("verify", "check a session's files against the digests its meta.json records")
    verify.add_argument("--session_id", required=True)

    command("list", "list sessions and their lineage")
    show = command("show", "print a session's meta.json")
    show.add_argument("--session_id", required=True)
    return parser


def uncommitted_runs(directory: Path, meta: dict[str, Any]) -> list[Path]:
    """The run directories under a session's ``runs/`` that its meta.json does not record (a run stopped before its
    commit, or one under way)."""
    recorded = {run.get("run_id") for run in meta.get("runs") or () if isinstance(run, dict)}
    runs = directory / "runs"
    return sorted(path for path in runs.iterdir() if path.name not in recorded and path.is_dir()
                  and not path.is_symlink()) if runs.is_dir() else []  # fmt: skip


def list_sessions(store: Store) -> list[dict[str, Any]]:
    """Every session from its own meta.json (index.json is a registry a run keeps, not the record: an entry it
    holds without a session, or one it lacks, is said, not shown as fact)."""
    if not store.root.is_dir():  # a mistyped root would list nothing and exit 0
        raise ConfigError(f"artifacts root {str(store.root)!r} does not exist; give the --artifacts_root that "
                          "`session init-base` wrote")  # fmt: skip
    if not (store.base_dir.is_dir() or (store.root / "sessions").is_dir()):  # a directory, but not an artifacts root
        raise ConfigError(f"{str(store.root)!r} holds no base and no sessions: not an artifacts root; give the "
                          "--artifacts_root that `session init-base` wrote")  # fmt: skip
    sessions_dir = store.root / "sessions"
    dirs = [p for p in sessions_dir.iterdir() if is_plain_name(p.name) and not p.name.startswith(".") and p.is_dir()
            and not p.is_symlink()] if sessions_dir.is_dir() else []  # fmt: skip
    found = sorted(p.name for p in dirs if (p / "meta.json").is_file())
    listed, unreadable = [], []
    try:
        entries = store.index()["sessions"]
        found = sorted({*found, *(p.name for p in dirs if p.name in entries)})  # a registered one lost its meta.json
    except (ConfigError, EvidenceError) as error:  # (the sessions are listed from their own records all the same)
        print(f"lit_psion: {error}", file=sys.stderr)
        entries = dict.fromkeys(found)
        unreadable += [error] if isinstance(error, EvidenceError) else []
    registered = set(entries)
    print(f"{'session':<16} {'parent':<16} {'root':<16} {'mu':>6} {'runs':>4}")
    for session_id in found:
        try:
            meta = store.session_meta(session_id)
        except (ConfigError, EvidenceError) as error:
            print(f"lit_psion: session {session_id!r} is not listed: {error}", file=sys.stderr)
            unreadable.append(error)
            continue
        print(f"{session_id:<16} {meta.get('parent_session_id') or '-':<16} {meta.get('root_session_id') or '-':<16} "
              f"{meta['mu']:>6} {len(meta['runs']):>4}")  # fmt: skip
        listed.append(meta)
        if (problem := registry_problem({**meta, "session_id": session_id}, entries.get(session_id))) is not None:
            print(f"lit_psion: {problem}", file=sys.stderr)  # (listed as meta.json says; the exit code says it)
            unreadable.append(problem)
    for session_id in sorted(registered - set(found)):
        print(f"note: index.json registers session {session_id!r}, which has no meta.json here", file=sys.stderr)
    for session_id in sorted(set(found) - registered):
        print(f"note: session {session_id!r} is not in index.json (a run of it registers it again)", file=sys.stderr)
    if unreadable:  # listed all the same; the exit code says a record does not verify
        raise SystemExit(5)
    return listed


def show_session(store: Store, session_id: str) -> dict[str, Any]:
    meta = store.session_meta(session_id)
    print(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def verify_session(store: Store, session_id: str) -> None:
    """One line per file: the base checkpoint, the session's artifacts, every run's files (JSON and hashes only).

    Raises:
        SystemExit: some file fails; its code is the first failure's (4: a checkpoint or state, 5: a record).
    """
    directory = store.session_dir(session_id)
    if (holder := lock_holder(directory)) is not None:  # a run or fork mid-commit: its files change under a check
        raise LockedError(f"session {session_id!r} is being written by {holder.describe()}; run session verify once "
                          "it has finished")  # fmt: skip
    meta = store.session_meta(session_id)
    store.base_meta()  # a readable base record, or the line that says there is none
    checks = [("base/" + BASE_CHECKPOINT, store.base_dir / BASE_CHECKPOINT, meta["base_ckpt_hash"], 4)]  # the
    # base this session was made for, not merely the one base_meta.json now describes
    if pending := store.pending_commit(session_id):  # a kill mid-install: committed, and installed by the next
        print(f"note {next(iter(pending.values())).parent.name}: a commit meta.json records, not yet installed (a "
              "kill stopped it); the next session run or fork installs it: its files are checked where they are")
    checks += [(name, pending.get(name, directory / name), digest, 4 if name in (PLASTIC, OPTIM) else 5)
               for name, digest in sorted((meta.get("artifacts") or {}).items())]  # fmt: skip
    extras, linked = [], _not_a_directory(directory, meta["runs"])  # read through a link: another directory's
    for run in [] if linked else meta["runs"]:
        run_dir = directory / "runs" / str(run.get("run_id"))
        checks += [(f"runs/{run.get('run_id')}/{name}", run_dir / name, digest, 5)
                   for name, digest in sorted((run.get("files") or {}).items())]  # fmt: skip
        extras += [f"runs/{run.get('run_id')}/{extra}" for extra in sorted(set(_listed(run_dir)) -
                                                                           set(run.get("files") or {}))]  # fmt: skip
    failures = []
    for name, path, expected, code in checks:
        actual = sha256_file(path) if path.is_file() and not path.is_symlink() else None
        ok = actual == expected
        found = actual or ("a symbolic link" if path.is_symlink() else "no file")
        print(f"{'ok  ' if ok else 'FAIL'} {name}: " + ("matches meta.json" if ok else
              f"expected sha256 {expected}, got {found}"))  # fmt: skip
        failures += [] if ok else [code]
    if linked:  # (session run refuses it the same way)
        print(f"FAIL {linked}: not the session's own directory (a link or a file in its place); restore it from a "
              "backup")  # fmt: skip
        checks.append((linked, None, None, 5))
        failures.append(5)
    for extra in extras:
        print(f"FAIL {extra}: not a file of the run meta.json records (added since)")
        checks.append((extra, None, None, 5))
        failures.append(5)
    for name, problem in [] if linked else _run_record_problems(directory, {**meta, "session_id": session_id}):
        print(f"{'FAIL' if problem else 'ok  '} {name}: {problem or RECORD_OK[name.rsplit(' ', 1)[1]]}")
        checks.append((name, None, None, 5))
        failures += [5] if problem else []
    if (problem := store.registry_problem({**meta, "session_id": session_id})) is not None:
        print(f"FAIL index.json: {problem}")
        failures.append(5)
    for stray in uncommitted_runs(directory, meta):
        print(f"note runs/{stray.name}: a run meta.json does not record (stopped before its commit, or under way); "
              "the session holds none of it: delete it once no run is under way")  # fmt: skip
    if not failures:  # the bytes are the recorded ones: now what a run would refuse in them (loads torch)
        from lit_psion.sessions.commands import settings_problem

        problem = settings_problem(meta["settings"])
        print(f"FAIL meta.json settings: session new refuses them ({problem})" if problem else
              "ok   meta.json settings: ones session new takes")  # fmt: skip
        checks.append("settings")
        failures += [5] if problem else []
        for name, check in _content_checks(store, meta):
            if name in pending:  # its bytes were checked where they are staged; the install then puts them in place
                continue
            try:
                check()
            except CheckpointError as error:
                print(f"FAIL {name}: {error}")
                failures.append(error.exit_code)
            else:
                print(f"ok   {name}: loads as a run would load it")
            checks.append(name)
    if failures:
        print(f"lit_psion: session verify: {len(failures)} of {len(checks)} checks failed", file=sys.stderr)
        raise SystemExit(failures[0])
    print(f"all {len(checks)} checks of session {session_id} passed")


RECORD_OK = {"chain": "its chain verifies, from the run genesis",
             "session": "its receipts bind it to this session, its base and the run before it"}
"""What an ``ok`` line says of each check of a run's records (``runs/<id> chain``, ``runs/<id> session``)."""


def _run_record_problems(directory: Path, meta: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(what, its problem or None) for each run's receipt chain (meta.json records the log's digest, which an edit
    re-hashed there would match: the chain's own digests would not) and the session, base and previous run that
    chain binds (a run copied in from another session), and a run meta.json records twice."""
    from lit_psion.core.chain import verify_log

    found, seen, previous = [], set(), None
    for run in meta["runs"]:
        run_id = str(run.get("run_id"))
        expected = {"session_id": meta["session_id"], "run_id": run_id, "base_ckpt_hash": meta["base_ckpt_hash"],
                    "previous_run_id": previous}  # fmt: skip
        previous = run_id
        if run_id in seen:
            found.append((f"runs/{run_id}", "meta.json records this run twice (a record copied in); restore "
                          "meta.json from a backup"))  # fmt: skip
        seen.add(run_id)
        log = directory / "runs" / run_id / RECEIPTS_FILE
        if RECEIPTS_FILE not in (run.get("files") or {}):  # (a missing file it records is its digest's FAIL)
            found.append((f"runs/{run_id}", f"meta.json records no {RECEIPTS_FILE} of this run, which every session "
                          "run writes: its record was cut; restore meta.json from a backup"))  # fmt: skip
        elif log.is_file() and not log.is_symlink():
            result = verify_log(log, run_id=run_id)
            found.append((f"runs/{run_id}/{RECEIPTS_FILE} chain", None if result.ok else result.describe()))
            if result.ok and (bound := binding_problem(log, expected)) != UNBOUND:
                found.append((f"runs/{run_id} session", bound))
    return found


def _not_a_directory(directory: Path, runs: list[Any]) -> str | None:
    """``runs`` or ``runs/<run_id>`` of a recorded run when it is a link or a file, else None."""
    for name in ["runs", *(f"runs/{run.get('run_id')}" for run in runs)] if runs else []:
        if (directory / name).is_symlink() or ((directory / name).exists() and not (directory / name).is_dir()):
            return name
    return None


def _listed(directory: Path) -> list[str]:
    """The names in a run directory, but hidden ones (a file manager's, a sync tool's: nothing reads them)."""
    if not directory.is_dir() or directory.is_symlink():
        return []
    return [path.name for path in directory.iterdir() if not path.name.startswith(".")]


def _content_checks(store: Store, meta: dict[str, Any]) -> list[tuple[str, Any]]:
    """What ``session run`` checks beyond digests: the base it was made for, and its states' contents."""
    return [("base model", lambda: store.check_signature(meta)), (PLASTIC, lambda: store.plastic_state(meta)),
            (OPTIM, lambda: store.optimizer_state(meta))]  # fmt: skip


def _holding_root(root: Path) -> tuple[Path, str] | None:
    """The artifacts root whose ``base/`` or ``sessions/`` directory ``root`` is (or is inside), with which of the
    two; None when it is in neither (a base written there would be mixed into that root's own files)."""
    path = root.expanduser().absolute()
    for parent in path.parents:
        part = path.relative_to(parent).parts[0]
        if part in ("base", "sessions") and ((parent / "base" / "base_meta.json").is_file() or (
                (parent / "sessions").is_dir() and (parent / "base").is_dir())):  # fmt: skip
            return parent, part
    return None


def session_main(args: list[str]) -> None:
    parsed = build_parser().parse_args(args)
    store = Store(parsed.artifacts_root)
    if store.root.exists() and not store.root.is_dir():
        made = " (a new path is made)" if parsed.command == "init-base" else ""
        raise ConfigError(f"--artifacts_root {str(store.root)!r} is a file, not a directory; give the artifacts "
                          f"directory{made}")  # fmt: skip
    if (holder := _holding_root(store.root)) is not None:
        raise ConfigError(f"--artifacts_root {str(store.root)!r} is inside the artifacts root {str(holder[0])!r} (its "
                          f"{holder[1]}/ directory, which only that root's commands write); give --artifacts_root "
                          f"{shell_words(holder[0])}")  # fmt: skip
    if parsed.command in ("init-base", "new", "fork", "run") and (run := in_a_run(store.root)) is not None:
        raise ConfigError(f"--artifacts_root {str(store.root)!r} {run[1]}: a base or a session written there would "
                          "overwrite the run's files or break its checkpoints; give a directory outside any run")
    if parsed.command == "list":  # reads JSON only: no torch, no Lightning
        list_sessions(store)
        return
    if parsed.command == "show":
        show_session(store, parsed.session_id)
        return
    if parsed.command == "verify":
        verify_session(store, parsed.session_id)
        return
    with underway(_what_a_stop_leaves(store, parsed)):
        _train(store, parsed)


def _what_a_stop_leaves(store: Store, parsed: argparse.Namespace) -> Callable[[], str]:
    """For a Ctrl-C or SIGTERM's line: what of the command's work was kept, asked when it stopped."""
    if parsed.command == "init-base":
        return lambda: ("the base was written before the stop" if (store.base_dir / "base_meta.json").is_file() else
                        "no base was written: run the command again")  # fmt: skip
    if parsed.command == "run":
        before = _runs(store, parsed.session_id)
        return lambda: (f"the run was committed to session {parsed.session_id!r} before the stop"
                        if _runs(store, parsed.session_id) > before else
                        f"session {parsed.session_id!r} keeps its state from before this run: nothing of it was "
                        "committed; run it again")  # fmt: skip
    made = parsed.session_id if parsed.command == "new" else parsed.child_session_id
    meta_path = store.root / "sessions" / made / "meta.json"
    existed = meta_path.is_file()  # (refused: a stop then leaves it as it was)
    return lambda: ("" if existed else f"session {made!r} was made before the stop" if meta_path.is_file() else
                    f"session {made!r} was not made: run the command again")  # fmt: skip


def _runs(store: Store, session_id: str) -> int:
    """How many runs a session's meta.json records (-1 when it cannot be read)."""
    try:
        return len(json.loads((store.root / "sessions" / session_id / "meta.json").read_text())["runs"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _train(store: Store, parsed: argparse.Namespace) -> None:
    """The session commands that train or write: torch and Lightning, imported here (after what JSON alone says is
    wrong: no base, no session, a run shorter than its chunk; each is checked again under the session's lock)."""
    if parsed.command == "run":  # in the order the run checks them
        store.base_config()
        chunk = store.session_meta(parsed.session_id)["settings"].get("chunk")
        if isinstance(chunk, int) and parsed.steps < chunk:  # (a chunk setting it refuses: the run names it)
            raise ConfigError(f"--steps {parsed.steps} is shorter than one chunk ({chunk}); use at least that")
    if parsed.command == "fork":  # (before torch: a refusal answers at once)
        fork_copies_optimizer(parsed.parent_session_id, parsed.child_session_id, parsed.copy_optimizer,
                              parsed.reset_optimizer)  # fmt: skip
    if parsed.command == "new" and not 0 <= parsed.mu <= MU_MAX:
        raise ConfigError(f"--mu must be a drift size in [0, {MU_MAX:g}], got {parsed.mu!r}")
    if parsed.command == "run" and parsed.steps > MAX_STEPS:  # each transition's record is held until it commits
        raise ConfigError(f"--steps {parsed.steps} is more than one run takes ({MAX_STEPS:,}); run the session "
                          "several times")  # fmt: skip
    from lit_psion.sessions import commands

    if parsed.command == "init-base":
        config = WorldConfig(env_mode=parsed.env_mode, u_dim=parsed.u_dim, n_state=parsed.n_state,
                             env_seed=parsed.env_seed)  # fmt: skip
        commands.init_base(store, config, parsed.pretrain_steps, parsed.pretrain_batch, parsed.pretrain_seq,
                           parsed.lr, parsed.momentum, parsed.ns_steps, parsed.seed)  # fmt: skip
    elif parsed.command == "new":
        parsed.mu += 0.0  # -0.0 is 0.0, as the session records and says it
        settings = {key: getattr(parsed, key) for key in SETTINGS}
        commands.new_session(store, parsed.session_id, parsed.mu, parsed.env_mode, settings)
    elif parsed.command == "fork":
        commands.fork_session(store, parsed.parent_session_id, parsed.child_session_id, parsed.copy_optimizer,
                              parsed.reset_optimizer)  # fmt: skip
    else:
        commands.run_session(store, parsed.session_id, parsed.steps, parsed.seed)
