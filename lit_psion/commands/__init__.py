"""The subcommands beside LightningCLI's fit/validate/test/predict, dispatched from one table.

Each command is a thin module over the library with a ``main(args)`` taking the arguments after
its name; it is imported only when used, so ``compare`` does not pay for what ``session`` needs.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import pathlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn

from lit_psion.core.errors import ConfigError


class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose every complaint (a missing argument too) is one line and exit 2."""

    def __init__(self, prog: str | None = None, **kwargs: object) -> None:
        kwargs.setdefault("exit_on_error", False)
        kwargs.setdefault("allow_abbrev", False)  # `--tok` for --tokens read as it; a later flag made it ambiguous
        super().__init__(prog=prog, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}{self._misspelt(message)} (see {self.prog} --help)")

    def _misspelt(self, message: str) -> str:
        """For a required flag reported missing, the flag given instead that is nearly it (``--session-id``)."""
        if not message.startswith("the following arguments are required: "):
            return ""
        required = [flag for flag in message.split(": ", 1)[1].split(", ") if flag.startswith("-")]
        known = {flag for action in self._actions for flag in action.option_strings}
        given = [arg.split("=", 1)[0] for arg in getattr(self, "_given", []) if arg.startswith("-")]
        for arg in given:
            if arg not in known and (near := difflib.get_close_matches(arg, required, n=1, cutoff=0.75)):
                return f"; {arg} was given, did you mean {near[0]}?"
        return ""

    def _takes_a_path(self, flag: str) -> bool:
        """Whether ``flag``, of this parser or any of its subcommands', takes a path (or is unknown here)."""
        parsers, found = [self], []
        while parsers:
            actions = parsers.pop()._actions
            found += [action for action in actions if flag in action.option_strings]
            parsers += [parser for action in actions if isinstance(action, argparse._SubParsersAction)
                        for parser in action.choices.values()]  # fmt: skip
        return not found or any(action.type is pathlib.Path for action in found)

    def parse_args(self, args=None, namespace=None):  # argparse's own signature
        """As argparse's, except that arguments no parser takes are named by the subcommand they were given to (with
        the nearest of its flags), not by the top-level command."""
        given = list(sys.argv[1:] if args is None else args)
        if (empty := next((i for i, arg in enumerate(given) if not arg.strip()), None)) is not None:
            flag = given[empty - 1] if empty and given[empty - 1].startswith("--") else None
            said = f"{flag} was given an empty value" if flag else f"an empty argument ({given[empty]!r}) was given"
            prog = self._named_before(given[:empty])
            path = " (a path of '' is read as the current directory)" * (flag is None or self._takes_a_path(flag))
            raise ConfigError(f"{prog}: {said}{path}; give one (see {prog} --help)")
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._chosen(parsed)
            flags = [flag for action in parser._actions for flag in action.option_strings]
            given = extras[0].split("=", 1)[0] if extras[0][:1] == "-" else ""
            near = difflib.get_close_matches(given, flags, n=1, cutoff=0.75) if given else []
            hint = f"; did you mean {near[0]}?" if near else ""
            raise ConfigError(f"{parser.prog}: unrecognized arguments: {' '.join(extras)}{hint} (see {parser.prog} "
                              "--help)")  # fmt: skip
        return parsed

    def error_in(self, parsed: argparse.Namespace, message: str) -> NoReturn:
        """An error in a value ``parsed`` holds, named by the (sub)command it was given to, as argparse's own are."""
        chosen = self._chosen(parsed)
        chosen.error(message)
        raise AssertionError("argparse's error returned")  # (it exits, or raises ConfigError)

    def _named_before(self, given: list[str]) -> str:
        """The prog of the deepest subcommand named among ``given`` (this command's when none is)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for index, arg in enumerate(given):
                    if arg in action.choices:
                        chosen = action.choices[arg]
                        return chosen._named_before(given[index + 1 :]) if isinstance(chosen, CommandParser) else \
                            chosen.prog  # fmt: skip
        return self.prog

    def _chosen(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The parser of the (sub)command ``parsed`` ran: the deepest subcommand chosen."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and getattr(parsed, action.dest, None) in action.choices:
                chosen = action.choices[getattr(parsed, action.dest)]
                return chosen._chosen(parsed) if isinstance(chosen, CommandParser) else chosen
        return self

    def parse_known_args(self, args=None, namespace=None):  # argparse's own signature
        self._given = [str(arg) for arg in (sys.argv[1:] if args is None else args)]
        try:
            return super().parse_known_args(args, namespace)
        except argparse.ArgumentError as error:  # an invalid choice or value: named as every other complaint is
            self.error(f"{error}{equals_hint(error)}")


def equals_hint(error: argparse.ArgumentError) -> str:
    """How to give a value argparse took for a flag (``--deadline -inf``), if that is what ``error`` says."""
    if not str(error).endswith("expected one argument"):
        return ""
    flag = error.argument_name.split("/")[-1] if error.argument_name else "--FLAG"
    return f", written as --FLAG=VALUE when the value starts with '-' (such as {flag}=-1)"


COMMANDS_MODULES = {
    "receipts": "lit_psion.commands.receipts",
    "ckpt": "lit_psion.commands.ckpt",
    "doctor": "lit_psion.commands.doctor",
    "mesh": "lit_psion.commands.mesh",
    "compare": "lit_psion.commands.compare",
    "adapter": "lit_psion.commands.adapter",
    "events": "lit_psion.commands.events",
    "session": "lit_psion.commands.session",
    "window": "lit_psion.commands.window",
    "generate": "lit_psion.commands.generate",
}
"""``python -m lit_psion NAME ...`` -> the module whose ``main`` runs it."""


def _lazy(module: str) -> Callable[[list[str]], None]:
    def run(argv: list[str]) -> None:
        importlib.import_module(module).main(argv[1:])

    return run


COMMANDS: dict[str, Callable[[list[str]], None]] = {name: _lazy(module) for name, module in COMMANDS_MODULES.items()}

TRAINING = {
    "fit": "train a model (python -m lit_psion fit --config configs/decoder_tiny.yaml)",
    "validate": "evaluate a run's checkpoint on the validation split",
    "test": "evaluate a run's checkpoint on the test split",
    "predict": "run a checkpoint over the validation split (there is no separate predict split)",
}
"""LightningCLI's subcommands (they import Lightning; the others answer without it)."""
SUMMARIES = {
    "receipts": "verify a run's receipt chain (receipts verify RUN_DIR)",
    "ckpt": "verify or consolidate a run's checkpoint (ckpt verify|consolidate RUN_DIR)",
    "doctor": "check everything a run holds, one verdict per artifact",
    "compare": "diff runs' configs and final metrics, overlay their curves",
    "adapter": "export, inspect or merge a LoRA adapter",
    "events": "predict MOSAIC events with a trained run",
    "session": "branching online-learning sessions (seed 000)",
    "mesh": "elastic mesh membership on torchrun: store, launch, status, drain",
    "window": "decentralized adapter windows: init, plan, open, contribute, close, run, status, verify",
    "generate": "sample text from a run, a checkpoint, a merged adapter or a window program's revision",
}
EXIT_INTERRUPTED = 130
EXIT_SIGTERM = 143


def usage() -> str:
    """The top-level help: every subcommand, one line each (docs/cli.md has them all)."""
    width = max(map(len, [*TRAINING, *SUMMARIES]))
    lines = ["usage: python -m lit_psion COMMAND [ARGS] (COMMAND --help for its options)", "", "training:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in TRAINING.items()]
    lines += ["", "runs, checkpoints and evidence:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in SUMMARIES.items()]
    lines += ["", "A model's own options: python -m lit_psion fit --model.help lit_psion.models.DecoderLM",
              "Exit codes and every flag: docs/cli.md"]  # fmt: skip
    return "\n".join(lines)


class Terminated(BaseException):
    """SIGTERM to a command other than LightningCLI's, raised where the command is (a session run's Trainer too:
    Lightning calls the handler it finds after its own)."""


_LEFT = "lit_psion_left"
"""The attribute an :func:`underway` block sets on the stop (Ctrl-C, SIGTERM) that ended it: what the command left."""


@contextlib.contextmanager
def underway(leaves: Callable[[], str]) -> Iterator[None]:
    """Run the block saying, if a Ctrl-C or SIGTERM stops it, what the command leaves (``leaves()``, asked then:
    a session run's commit may just have landed), after "interrupted" or "stopped by SIGTERM"."""
    try:
        yield
    except (KeyboardInterrupt, Terminated, SystemExit) as stop:
        if not isinstance(stop, SystemExit) or _stopped_by_a_signal(stop):
            setattr(stop, _LEFT, leaves())
        raise


def _stopped_by_a_signal(stop: SystemExit) -> bool:
    """A Trainer's exit for a signal: Lightning's SIGTERMException (code None), or its exit(1) raised while handling
    a Ctrl-C; neither is success, nor our bug."""
    return type(stop).__name__ == "SIGTERMException" or isinstance(stop.__context__, KeyboardInterrupt)


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


_DISCARDED = "; what the command had not committed is discarded: run it again"


def _left(stop: BaseException, otherwise: str = "") -> str:
    return f"; {left}" if (left := getattr(stop, _LEFT, "")) else otherwise


def run_command(argv: list[str]) -> int:
    """Run a subcommand other than LightningCLI's; a known error becomes one line on stderr and its exit code.

    This is the whole path of ``python -m lit_psion receipts ...`` and the like: no Lightning is imported
    unless the command itself needs it, so they answer in well under a second.
    """
    import os
    import sys

    from lit_psion.commands.lightning_words import quiet_lightning
    from lit_psion.core.errors import LitPsionError, lit_psion_cause, raised_at

    quiet_lightning(own_trainer=True)  # (a session's or a window's Trainer printed its banner, tip and step count)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None  # said, not a silent death
    try:
        COMMANDS[argv[0]](argv)
    except KeyboardInterrupt as stop:
        print(f"lit_psion: interrupted{_left(stop)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as stop:
        print(f"lit_psion: stopped by SIGTERM{_left(stop, _DISCARDED)}", file=sys.stderr)
        return EXIT_SIGTERM
    except BrokenPipeError:  # the reader left (``| head``): what it read was complete, so was the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SystemExit as stop:  # --help, or a command that printed its verdicts and chose its exit code
        # A Trainer the command runs (session, window) turns SIGTERM into its SIGTERMException (code None) and
        # Ctrl-C into exit(1) raised while handling the KeyboardInterrupt: neither is success, nor our bug.
        if type(stop).__name__ == "SIGTERMException":
            print(f"lit_psion: stopped by SIGTERM{_left(stop, _DISCARDED)}", file=sys.stderr)
            return EXIT_SIGTERM
        if isinstance(stop.__context__, KeyboardInterrupt):
            print(f"lit_psion: interrupted{_left(stop)}", file=sys.stderr)
            return EXIT_INTERRUPTED
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    except Exception as error:
        if os.environ.get("LIT_PSION_DEBUG"):
            raise
        known = lit_psion_cause(error)
        if known is None and isinstance(error, argparse.ArgumentError):  # a parser other than CommandParser's
            known = ConfigError(f"{error}{equals_hint(error)}")
        if known is not None:
            print(f"lit_psion: error: {' '.join(str(known).split())}", file=sys.stderr)
            return known.exit_code
        if not isinstance(error, LitPsionError):
            print(f"lit_psion: unexpected error: {type(error).__name__}: {' '.join(str(error).split())}"
                  f"{raised_at(error)} (set LIT_PSION_DEBUG=1 for the traceback)", file=sys.stderr)  # fmt: skip
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return 0
