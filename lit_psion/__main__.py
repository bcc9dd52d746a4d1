"""`python -m lit_psion ...` entry point.

Only fit/validate/test/predict need Lightning; every other subcommand (and the top-level help) is
dispatched from :mod:`lit_psion.commands` without importing it, so it answers at once.
"""

try:  # every import, the standard library's too (compiled on a first run, they take a while)
    import atexit
    import contextlib
    import os
    import signal
    import sys
    import threading

    from lit_psion.commands import COMMANDS, TRAINING, run_command, usage
except KeyboardInterrupt:  # a Ctrl-C as the command starts: no traceback of the imports it stopped
    import sys

    print("lit_psion: interrupted", file=sys.stderr)
    raise SystemExit(130) from None


def _main(argv: list[str]) -> int:
    code = 0
    try:
        code = _entry(argv)
        sys.stdout.flush()  # here, not at the interpreter's exit, where a reader gone is exit 120 and a warning
    except BrokenPipeError:  # the reader left (``| head``, ``| true``): what it read was complete, so is the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:  # between the imports and a command's own handler: no traceback either
        print("lit_psion: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # before a command's own handler (an import that fails): its traceback, exit 1
        from lit_psion.commands.launch import tell_the_launcher_of_a_bug

        tell_the_launcher_of_a_bug(f"{type(error).__name__}: {error}")  # (under mesh launch: a restart won't fix it)
        raise
    return code


def _entry(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        return _said(run_command(argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in TRAINING and not argv[0].startswith("-"):
        import difflib

        near = difflib.get_close_matches(argv[0].lower(), [*TRAINING, *COMMANDS], n=1, cutoff=0.6)
        print(f"lit_psion: error: unknown command {argv[0]!r}{f' (did you mean {near[0]}?)' if near else ''}; commands "
              f"are {', '.join([*TRAINING, *COMMANDS])} (python -m lit_psion --help)", file=sys.stderr)  # fmt: skip
        return 2
    signal.signal(signal.SIGTERM, _terminated)  # (a kill during the imports: said, not a silent death)
    try:
        from lit_psion.cli import main  # torch and Lightning: seconds, in which a Ctrl-C is no traceback either
    except KeyboardInterrupt:
        print("lit_psion: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("lit_psion: stopped by SIGTERM while starting; nothing was written", file=sys.stderr)
        return 143
    except OSError as error:  # importing torch needs a writable temporary directory, before any handler is set
        print(f"lit_psion: error: starting up failed: {error.strerror or error}; free space where the temporary "
              "directory is (or set TMPDIR to one with room), then run the command again", file=sys.stderr)  # fmt: skip
        return 6
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # (lit_psion.cli.main sets a fit's own)
    return _exit_without_teardown(_said(main()))  # LightningCLI reads sys.argv itself (given both, it warns)


class _Terminated(BaseException):
    """SIGTERM while the training command imports torch and Lightning."""


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _said(code: int) -> int:
    """``code``, once the command has printed its verdict: a Ctrl-C from here on (the second or so the interpreter
    takes to tear torch down) is ignored, not turned into exit 130 with no line after the command's own lines
    (a `session run` that had committed read as interrupted). Not while a thread the exit waits for still runs:
    a Ctrl-C may be what stops it."""
    if not any(not thread.daemon for thread in threading.enumerate() if thread is not threading.main_thread()):
        with contextlib.suppress(ValueError):  # (not the main thread: an embedding program's handlers are its own)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


def _exit_without_teardown(code: int) -> int:
    """End a training command that succeeded at once: run the exit handlers (W&B's finish, logging's flush),
    flush stdout and stderr, and exit without tearing the interpreter down, which takes 1-2 s once torch and
    Lightning are loaded. Nothing is lost: every file a fit writes is closed (checkpoints and receipts also
    synced) before fit returns.
    """
    if code != 0:
        return code  # a failed or paused rank exits as before (lit_psion.cli.main has waited for rank 0)
    if any(not thread.daemon for thread in threading.enumerate() if thread is not threading.main_thread()):
        return code  # a thread still working: the normal exit waits for it
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def console() -> int:
    """The ``lit-psion`` console script: the same dispatch as ``python -m lit_psion``."""
    return _main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
