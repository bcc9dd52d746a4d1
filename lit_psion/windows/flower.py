"""Many machines' engine: the roles of a window as a Flower app (flwr 1.42 Message API).

The server app does what ``window run`` does, holding the program lock for each window: it plans
the window over the connected nodes (one contributor per node, ``plan_window``), opens it, sends
each assignment to its contributor's node, and writes every reply through the path a local
contributor uses (a staging directory renamed into ``contributions/<assignment>/`` by
:func:`~lit_psion.windows.contribute.submit`). A node that fails, or does not reply before the
deadline, has no submission: the seal makes its slice ``replay_required``. Then ``seal``,
``score`` and ``reconcile``, the functions the one-machine engine calls. Planning, validation,
aggregation and the gate never run anywhere else, so dispositions do not depend on the transport.

A client app receives the plan, its assignment id, the input revision's checkpoint files and the
program's tokenizer; it rebuilds a mirror of the program root in a temporary directory (the
tokenizer at its root, the revision at ``plan.input_checkpoint``), trains with
:func:`~lit_psion.windows.contribute.train_adapter` (which verifies the revision against the plan's
digest, the rebuilt data against the plan's manifest digest and the slice against its digest),
writes the artifact with :func:`~lit_psion.windows.contribute.write_artifact` and replies with its
two files. The data files are read at the absolute paths of ``plan.data``: every node holds the
program's data there (the data manifest digest commits to the paths as given).

Run config (``[tool.flwr.app.config]`` of ``lit_psion/windows/flower_app/pyproject.toml``):
``root`` (the program root, from ``python -m lit_psion window init``), ``windows`` (how many
windows to run), ``deadline`` (seconds a window waits for replies after dispatch; 0: until every
node replies or fails), ``min-nodes`` (wait for this many connected nodes before the first window)
and ``node-wait`` (seconds to wait for them). Node config (``flower-supernode --node-config``):
``work-dir``, where a client app builds its temporary mirror (default: the system's temp dir).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from lit_psion.core.checkpoint import MANIFEST_FILE
from lit_psion.core.errors import ConfigError
from lit_psion.core.windows import WindowPlan, WindowStateError
from lit_psion.windows.contribute import ADAPTER, CONTRIBUTION, submit, train_adapter, write_artifact
from lit_psion.windows.coordinator import open_window, program_lock
from lit_psion.windows.program import TOKENIZER, Program, plan_window, remove_staging

ACTION = "adapter_window"
MESSAGE_TYPE = f"{MessageType.TRAIN}.{ACTION}"
"""What a window's assignment message is: the client app's ``train`` function registered as ``adapter_window``."""
WINDOW, REVISION, PROGRAM_FILES, ARTIFACT = "window", "revision", "program", "artifact"
"""The records of a message: the plan and assignment id (config), the revision's checkpoint files, the
program's tokenizer, and (in a reply) the artifact's files."""
RAW = "raw"
"""The ``stype`` of an :class:`~flwr.app.Array` that carries a file's bytes as they are (Flower chunks them)."""
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
POLL_SECONDS = 1.0

# -- files <-> records ----------------------------------------------------------------------


def files_record(files: dict[str, bytes]) -> ArrayRecord:
    """An ArrayRecord holding each file's bytes as one ``uint8`` Array (sent in chunks of at most 5 MB)."""
    record = ArrayRecord()
    for name, data in files.items():
        record[name] = Array(dtype="uint8", shape=(len(data),), stype=RAW, data=bytes(data))
    return record


def record_files(record: ArrayRecord, allowed: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """The files an ArrayRecord from :func:`files_record` holds (only ``allowed`` names, when given).

    Raises:
        ConfigError: a name that is not a plain file name, a name outside ``allowed``, or an Array that is not a
            file's bytes: what another party sent is not trusted as a path.
    """
    files = {}
    for name, array in record.items():
        if not FILE_NAME.fullmatch(name) or (allowed is not None and name not in allowed):
            raise ConfigError(f"the message carries a file named {name!r}; expected {', '.join(allowed or ())}")
        if array.stype != RAW or array.dtype != "uint8" or tuple(array.shape) != (len(array.data),):
            raise ConfigError(f"the message's {name!r} is not a file's bytes (stype {array.stype!r})")
        files[name] = array.data
    return files


# -- server ---------------------------------------------------------------------------------


def revision_files(program: Program, plan: WindowPlan) -> dict[str, bytes]:
    """The input revision's checkpoint files, as verified against the plan's digest."""
    revision = program.revision(plan.input_checkpoint, plan.input_revision)
    return {**revision.contents, MANIFEST_FILE: (revision.path / MANIFEST_FILE).read_bytes()}


def assignment_messages(program: Program, plan: WindowPlan, nodes: list[int],
                        ttl: float | None) -> tuple[list[Message], list[str]]:  # fmt: skip
    """One message per assignment, to its contributor's node (contributor ``c<i>`` is ``nodes[i % len(nodes)]``),
    and the assignment ids in the same order."""
    node_of = {contributor: nodes[i % len(nodes)] for i, contributor in enumerate(plan.contributors)}
    revision = files_record(revision_files(program, plan))
    tokenizer = files_record({TOKENIZER: (program.root / TOKENIZER).read_bytes()})
    plan_json = json.dumps(plan.to_json_dict(), sort_keys=True)
    messages, ids = [], []
    for assignment in plan.assignments:
        content = RecordDict({WINDOW: ConfigRecord({"plan": plan_json, "assignment_id": assignment.assignment_id}),
                              REVISION: revision, PROGRAM_FILES: tokenizer})  # fmt: skip
        messages.append(Message(content, node_of[assignment.contributor], MESSAGE_TYPE, ttl=ttl,
                                group_id=plan.window_id))  # fmt: skip
        ids.append(assignment.assignment_id)
    return messages, ids


def stage_reply(program: Program, plan: WindowPlan, assignment_id: str, reply: Message) -> str:
    """Submit a reply's artifact as a local contributor would; what became of it, in a few words."""
    if reply.has_error():
        return f"no submission (the node failed: {reply.error.reason})"
    if ARTIFACT not in reply.content.array_records:
        return "no submission (the reply carries no artifact)"
    try:
        files = record_files(reply.content.array_records[ARTIFACT], (ADAPTER, CONTRIBUTION))
    except ConfigError as error:
        return f"no submission ({error})"
    staged = program.window_dir(plan.window_id) / "contributions" / f".{assignment_id}.tmp-{os.getpid()}"
    remove_staging(staged)
    staged.mkdir(parents=True)
    for name, data in files.items():  # a missing file is the validator's to find (malformed)
        (staged / name).write_bytes(data)
    try:
        submit(program, plan.window_id, assignment_id, staged)
    except (ConfigError, WindowStateError) as error:
        return f"no submission ({error})"
    return "submitted"


def collect(grid: Grid, program: Program, plan: WindowPlan, messages: list[Message], ids: list[str],
            deadline: float | None) -> dict[str, str]:  # fmt: skip
    """Send the assignments and submit each reply as it arrives, until all replied or ``deadline`` seconds passed."""
    until = None if deadline is None else time.monotonic() + deadline
    message_ids = list(grid.push_messages(messages))
    if len(message_ids) != len(ids):  # the SuperLink refused the whole push (a payload too large)
        message_ids = [None] * len(ids)
    outcome = {aid: "no submission (the message could not be sent)" for aid, mid in zip(ids, message_ids, strict=True)
               if not mid}  # fmt: skip
    pending = {mid: aid for aid, mid in zip(ids, message_ids, strict=True) if mid}
    while pending and (until is None or time.monotonic() < until):
        for reply in grid.pull_messages(list(pending)):
            assignment_id = pending.pop(reply.metadata.reply_to_message_id, None)
            if assignment_id is not None:
                outcome[assignment_id] = stage_reply(program, plan, assignment_id, reply)
        if pending:
            time.sleep(POLL_SECONDS)
    for assignment_id in pending.values():
        outcome[assignment_id] = "no submission (no reply before the deadline)"
    return {aid: outcome[aid] for aid in ids}


def run_window(grid: Grid, root: Path, deadline: float | None = None) -> dict[str, Any]:
    """Plan a window over the connected nodes, dispatch it, collect the replies, then seal, score and reconcile
    (holding the program lock throughout); the promotion record, the dispositions and each reply's outcome."""
    from lit_psion.windows.aggregate import reconcile
    from lit_psion.windows.validate import score, seal

    nodes = sorted(grid.get_node_ids())
    if not nodes:
        raise ConfigError("no node is connected to the SuperLink; start flower-supernode(s) first")
    program = Program(root)
    with program_lock(root, "flower window"):
        plan = plan_window(root, contributors=len(nodes))
        open_window(root, plan.window_id)
        messages, ids = assignment_messages(program, plan, nodes, ttl=deadline)
        print(f"{plan.window_id}: sending {len(messages)} assignment(s) to {len(nodes)} node(s), revision "
              f"{plan.input_revision[:12]}...", flush=True)  # fmt: skip
        started = time.monotonic()
        replies = collect(grid, program, plan, messages, ids, deadline)
        train_s = time.monotonic() - started
        seal(root, plan.window_id)
        dispositions = score(root, plan.window_id)
        promotion = reconcile(root, plan.window_id)
    counts: dict[str, int] = {}
    for entry in dispositions["assignments"].values():
        counts[entry["disposition"]] = counts.get(entry["disposition"], 0) + 1
    print(f"{plan.window_id}: {', '.join(f'{n} {d}' for d, n in sorted(counts.items()))}; {promotion['decision']} "
          f"({', '.join(f'{aid} {what}' for aid, what in replies.items())}; {train_s:.1f}s to collect)",
          flush=True)  # fmt: skip
    return {**promotion, "dispositions": counts, "replies": replies}


def wait_for_nodes(grid: Grid, count: int, seconds: float) -> list[int]:
    """The connected node ids once there are ``count`` of them.

    Raises:
        ConfigError: fewer than ``count`` nodes connected within ``seconds``.
    """
    until = time.monotonic() + seconds
    while len(nodes := list(grid.get_node_ids())) < count:
        if time.monotonic() >= until:
            raise ConfigError(f"{len(nodes)} node(s) connected within {seconds:g}s, min-nodes is {count}")
        time.sleep(POLL_SECONDS)
    return nodes


server_app = ServerApp()


@server_app.main()
def serve(grid: Grid, context: Context) -> None:
    """Run ``windows`` windows of the program at ``root`` over the connected nodes."""
    config = context.run_config
    if not str(config.get("root", "")):
        raise ConfigError("run config 'root' is not set; flwr run APP FEDERATION --run-config \"root='ROOT'\"")
    root = Path(str(config["root"]))
    if not root.is_absolute():  # the ServerApp runs where the SuperLink was started, not where `flwr run` was typed
        raise ConfigError(f"run config 'root' {str(root)!r} is relative: the server app resolves it from the "
                          "SuperLink's directory; give an absolute path (--run-config \"root='$PWD/windows'\")")
    Program(root).require()
    deadline = float(config.get("deadline", 0) or 0) or None
    wait_for_nodes(grid, int(config.get("min-nodes", 1)), float(config.get("node-wait", 120)))
    for _ in range(int(config.get("windows", 1))):
        run_window(grid, root, deadline)


# -- client ---------------------------------------------------------------------------------


def build_mirror(directory: Path, plan: WindowPlan, revision: dict[str, bytes], tokenizer: bytes) -> Program:
    """A program root holding what a contributor needs: the tokenizer, and the revision at the plan's path.

    Raises:
        ConfigError: the plan's checkpoint path leaves the mirror (what a server sends is not trusted as a path).
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / TOKENIZER).write_bytes(tokenizer)
    target = (directory / plan.input_checkpoint).resolve()
    if Path(plan.input_checkpoint).is_absolute() or not target.is_relative_to(directory.resolve()) or \
            target == directory.resolve():  # fmt: skip
        raise ConfigError(f"the plan's input checkpoint {plan.input_checkpoint!r} is not a directory under a "
                          "program root")  # fmt: skip
    target.mkdir(parents=True)
    for name, data in revision.items():
        (target / name).write_bytes(data)
    return Program(directory)


def contribute_reply(message: Message, work_dir: str | None = None) -> Message:
    """Train the message's assignment on a mirror of the program and reply with the artifact's files."""
    request = message.content
    window = request.config_records[WINDOW]
    plan = WindowPlan.from_json_dict(json.loads(str(window["plan"])))
    assignment = plan.assignment(str(window["assignment_id"]))
    revision = record_files(request.array_records[REVISION])
    tokenizer = record_files(request.array_records[PROGRAM_FILES], (TOKENIZER,))[TOKENIZER]
    with tempfile.TemporaryDirectory(prefix="lit_psion-flower-", dir=work_dir) as scratch:
        mirror = build_mirror(Path(scratch) / "program", plan, revision, tokenizer)
        tensors, summary = train_adapter(mirror, plan, assignment)
        artifact = write_artifact(Path(scratch) / "artifact", plan, assignment, assignment.contributor, tensors,
                                  summary)  # fmt: skip
        files = {name: (artifact / name).read_bytes() for name in (ADAPTER, CONTRIBUTION)}
    print(f"{plan.window_id}/{assignment.assignment_id}: trained {summary['steps']} steps on slice "
          f"{assignment.slice.index} (loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f})",
          flush=True)  # fmt: skip
    return Message(RecordDict({ARTIFACT: files_record(files)}), reply_to=message)


client_app = ClientApp()


@client_app.train(ACTION)
def contribute(message: Message, context: Context) -> Message:
    """A contributor: the honest training of :mod:`lit_psion.windows.contribute`, over Flower."""
    work_dir = context.node_config.get("work-dir")
    return contribute_reply(message, str(work_dir) if work_dir else None)
