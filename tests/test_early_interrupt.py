"""A Ctrl-C in a command's first tenth of a second (while it imports what it needs, before the command's own
handler) is "lit_psion: interrupted", exit 130, never a KeyboardInterrupt traceback of the imports."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO_ROOT, subprocess_env


def test_a_ctrl_c_at_any_moment_of_the_start_is_one_line(tmp_path: Path) -> None:
    for delay in [0.01 * step for step in range(2, 30, 2)]:  # across the imports, whenever they happen here
        process = subprocess.Popen([sys.executable, "-m", "lit_psion", "doctor", str(tmp_path)], cwd=REPO_ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env=subprocess_env(PYTHONPATH=str(REPO_ROOT)))  # fmt: skip
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        err = process.communicate(timeout=60)[1]
        ours = [line for line in err.splitlines() if line.strip().startswith("File") and "/lit_psion/" in line]
        assert not ours, (delay, err)
        if "Traceback" in err or "Fatal Python error" in err:  # in the interpreter's start or runpy's module lookup,
            continue  # before any of lit_psion's code ran: nothing of ours can catch it
        # (-SIGINT: before the interpreter set its handler; 2: the command had already refused the directory)
        assert process.returncode in (130, -signal.SIGINT, 2), (delay, process.returncode, err)


def test_no_source_file_needs_an_import_to_compile() -> None:
    """A ``\\N{...}`` escape makes the compiler import ``unicodedata``: a Ctrl-C during that import turned a
    command's start into a SyntaxError traceback in lit_psion's own file. Every source compiles without it."""
    sources = [path for room in ("lit_psion", "callbacks", "datamodules", "strategies")
               for path in sorted((REPO_ROOT / room).rglob("*.py"))]  # fmt: skip
    script = (
        "import sys\nsys.modules['unicodedata'] = None\nfailed = []\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n        compile(open(name, encoding='utf-8').read(), name, 'exec')\n"
        "    except SyntaxError as error:\n        failed.append(f'{name}: {error}')\n"
        "print('\\n'.join(failed))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *map(str, sources)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(sources) > 50 and result.stdout.strip() == "", result.stdout
