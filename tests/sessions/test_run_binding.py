"""A session run is bound to its session: a run moved between sessions, roots or places fails ``session verify``.

Each case passed "all N checks of session s1" before runs named their session: every file matched the digest
``meta.json`` records, and each run's chain verified from its own genesis.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lit_psion.core import read_json, sha256_bytes
from lit_psion.core.chain import genesis
from lit_psion.core.digest import sha256_json
from lit_psion.sessions.run_binding import BINDING_FILE
from tests.sessions.helpers import session

SMALLER_BASE = ["--pretrain_steps", "20", "--pretrain_batch", "8", "--pretrain_seq", "16"]


@pytest.fixture(scope="module")
def roots_once(trained_once: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``here``: s1 with two runs and s2 with one; ``elsewhere``: another base, and its own s1 with one run."""
    top = tmp_path_factory.mktemp("bound")
    here, elsewhere = top / "here", top / "elsewhere"
    shutil.copytree(trained_once, here)
    assert session("run", "--artifacts_root", str(here), "--session_id", "s1", "--steps", "32", "--seed", "2") == 0
    assert session("new", "--artifacts_root", str(here), "--session_id", "s2") == 0
    assert session("run", "--artifacts_root", str(here), "--session_id", "s2", "--steps", "32") == 0
    assert session("init-base", "--artifacts_root", str(elsewhere), *SMALLER_BASE) == 0
    assert session("new", "--artifacts_root", str(elsewhere), "--session_id", "s1") == 0
    assert session("run", "--artifacts_root", str(elsewhere), "--session_id", "s1", "--steps", "32") == 0
    return top


@pytest.fixture
def roots(roots_once: Path, tmp_path: Path) -> Path:
    shutil.copytree(roots_once, tmp_path / "roots")
    return tmp_path / "roots"


def _meta(root: Path, session_id: str) -> dict:
    return read_json(root / "sessions" / session_id / "meta.json")


def _write_meta(root: Path, session_id: str, meta: dict) -> None:
    (root / "sessions" / session_id / "meta.json").write_text(json.dumps(meta))


def _copied_in(source: str, session_id: str) -> Callable[[Path], None]:
    """The last run of ``source`` (``here/s2`` or ``elsewhere/s1``) copied into here's s1, its record appended."""

    def harm(top: Path) -> None:
        root, source_id = top / source.split("/")[0], source.split("/")[1]
        run = _meta(root, source_id)["runs"][-1]
        shutil.copytree(root / "sessions" / source_id / "runs" / run["run_id"],
                        top / "here" / "sessions" / session_id / "runs" / run["run_id"])  # fmt: skip
        meta = _meta(top / "here", session_id)
        meta["runs"].append(run)
        _write_meta(top / "here", session_id, meta)

    return harm


def _reordered(top: Path) -> None:
    meta = _meta(top / "here", "s1")
    meta["runs"].reverse()
    _write_meta(top / "here", "s1", meta)


def _binding_rewritten(top: Path) -> None:
    """The last run's session_run.json made to say another session, and its digest re-recorded in meta.json."""
    meta = _meta(top / "here", "s1")
    path = top / "here" / "sessions" / "s1" / "runs" / meta["runs"][-1]["run_id"] / BINDING_FILE
    path.write_text(json.dumps({**read_json(path), "session_id": "s9"}, indent=2, sort_keys=True) + "\n")
    meta["runs"][-1]["files"][BINDING_FILE] = sha256_bytes(path.read_bytes())
    _write_meta(top / "here", "s1", meta)


def _cut(*names: str) -> Callable[[Path], None]:
    """Files of the last run deleted, with their records."""

    def harm(top: Path) -> None:
        meta = _meta(top / "here", "s1")
        for name in names:
            (top / "here" / "sessions" / "s1" / "runs" / meta["runs"][-1]["run_id"] / name).unlink()
            del meta["runs"][-1]["files"][name]
        _write_meta(top / "here", "s1", meta)

    return harm


MOVED = [  # (case, what is done, what the FAIL line says)
    ("another session's run copied in", _copied_in("here/s2", "s1"), "session_id 's2'"),
    ("another root's s1 run copied in", _copied_in("elsewhere/s1", "s1"), "base_ckpt_hash"),
    ("the runs reordered", _reordered, "previous_run_id"),
    ("its binding rewritten and re-recorded", _binding_rewritten, "it was edited"),
    ("its binding cut with its record", _cut(BINDING_FILE), f"{BINDING_FILE} is missing"),
    ("its log and binding cut with their records", _cut(BINDING_FILE, "receipts.jsonl"), "records no receipts.jsonl"),
]


@pytest.mark.parametrize(("case", "harm", "says"), MOVED, ids=[c[0] for c in MOVED])
def test_a_run_is_held_to_the_session_its_receipts_bind(roots: Path, capsys: pytest.CaptureFixture, case: str,
                                                        harm: Callable[[Path], None], says: str) -> None:  # fmt: skip
    for root, session_id in ((roots / "here", "s1"), (roots / "here", "s2"), (roots / "elsewhere", "s1")):
        assert session("verify", "--artifacts_root", str(root), "--session_id", session_id) == 0
        out = capsys.readouterr().out
        assert "session: its receipts bind it to this session, its base and the run before it" in out
    harm(roots)
    assert session("verify", "--artifacts_root", str(roots / "here"), "--session_id", "s1") == 5
    out = capsys.readouterr().out
    assert any(line.startswith("FAIL") and says in line for line in out.splitlines()), out


def _as_before_binding(run_dir: Path) -> str:
    """The run as a session run wrote it before runs named their session: no session_run.json, and a chain whose
    started receipt records no config digest (the chain rebuilt from the run's genesis, as it then was)."""
    (run_dir / BINDING_FILE).unlink()
    prev, lines = genesis(run_dir.name), []
    for line in (run_dir / "receipts.jsonl").read_text().splitlines():
        fields = {k: v for k, v in json.loads(line).items() if k != "digest"}
        fields["prev_digest"] = prev
        if fields["kind"] == "training_run":
            fields["body"]["config_digest"] = None
        prev = sha256_json(fields)
        lines.append(json.dumps({**fields, "digest": prev}))
    (run_dir / "receipts.jsonl").write_text("\n".join(lines) + "\n")
    return sha256_bytes((run_dir / "receipts.jsonl").read_bytes())


def test_a_run_from_before_runs_named_their_session_still_verifies(roots: Path, capsys: pytest.CaptureFixture) -> None:
    root = roots / "here"
    meta = _meta(root, "s1")
    first = meta["runs"][0]
    run_dir = root / "sessions" / "s1" / "runs" / first["run_id"]
    first["files"]["receipts.jsonl"] = _as_before_binding(run_dir)
    del first["files"][BINDING_FILE]
    _write_meta(root, "s1", meta)
    assert session("verify", "--artifacts_root", str(root), "--session_id", "s1") == 0
    out = capsys.readouterr().out
    assert f"runs/{first['run_id']} session" not in out  # nothing to check it against
    assert f"runs/{meta['runs'][1]['run_id']} session: its receipts bind it" in out
    (run_dir / BINDING_FILE).write_text("{}\n")  # added since: its started receipt records none
    meta["runs"][0]["files"][BINDING_FILE] = sha256_bytes(b"{}\n")
    _write_meta(root, "s1", meta)
    assert session("verify", "--artifacts_root", str(root), "--session_id", "s1") == 5
    assert "is not the one the run started with" in capsys.readouterr().out


def _linked(name: Callable[[dict], str]) -> Callable[[Path], Path]:
    def harm(root: Path) -> Path:
        path = root / "sessions" / "s1" / name(_meta(root, "s1"))
        shutil.move(path, root.parent / "elsewhere-copy")
        path.symlink_to(root.parent / "elsewhere-copy", target_is_directory=True)
        return path

    return harm


LINKED = [_linked(lambda meta: "runs"), _linked(lambda meta: f"runs/{meta['runs'][0]['run_id']}")]


@pytest.mark.parametrize("harm", LINKED, ids=["runs/ a link", "a run a link"])
def test_runs_read_through_a_link_are_one_line_not_passed(roots: Path, capsys: pytest.CaptureFixture,
                                                          harm: Callable[[Path], Path]) -> None:  # fmt: skip
    """The files matched (they are the same bytes, elsewhere): verify passed what session run refuses."""
    path = harm(roots / "here")
    assert session("verify", "--artifacts_root", str(roots / "here"), "--session_id", "s1") == 5
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]
    assert line == (f"FAIL {path.relative_to(roots / 'here' / 'sessions' / 's1')}: not the session's own directory "
                    "(a link or a file in its place); restore it from a backup")  # fmt: skip
