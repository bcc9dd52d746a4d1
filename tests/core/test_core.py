"""Digests, atomic files and the run record."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from lit_psion.core import (
    RunRecord,
    RunStatus,
    atomic_write_json,
    canonical_json,
    read_json,
    sha256_file,
    sha256_json,
)
from lit_psion.core.run import read_latest, write_latest


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()
    assert sha256_json({"a": 1, "b": 2}) == sha256_json({"b": 2, "a": 1})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"x": [float("-inf")]}])
def test_canonical_json_refuses_non_finite_floats(value: object) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        canonical_json(value)


def test_file_digest_streams_to_the_same_sha256(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10_000  # larger than one read chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_atomic_write_replaces_whole_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    atomic_write_json(path, {"step": 1})
    atomic_write_json(path, {"step": 2})
    assert read_json(path) == {"step": 2}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_run_record_round_trips_and_latest_pointer(tmp_path: Path) -> None:
    record = RunRecord(run_id="r1", status=RunStatus.ACTIVE, global_step=7)
    record.save(tmp_path / "r1")
    loaded = RunRecord.load(tmp_path / "r1")
    assert loaded.status is RunStatus.ACTIVE and loaded.global_step == 7
    assert read_json(tmp_path / "r1" / "run.json")["status"] == "active"
    assert read_latest(tmp_path) is None
    write_latest(tmp_path, "r1")
    assert read_latest(tmp_path) == "r1"


def test_a_typed_failure_behind_a_clean_up_that_hit_a_full_disk_keeps_its_code() -> None:
    """On a full disk, the clean-up after a typed failure (run.json marked failed) raises ENOSPC too, with the
    typed failure as its context: the run stopped for the typed one."""
    import errno

    from lit_psion.core.errors import CheckpointError, StorageFull, lit_psion_cause

    try:
        try:
            raise CheckpointError("the checkpoint is not this run's")
        except CheckpointError:
            raise OSError(errno.ENOSPC, "No space left on device", "run.json")  # noqa: B904  (as a clean-up does)
    except OSError as cleanup:
        assert isinstance(lit_psion_cause(cleanup), CheckpointError)
    alone = OSError(errno.ENOSPC, "No space left on device", "data_manifest.json")
    found = lit_psion_cause(alone)
    assert isinstance(found, StorageFull) and found.exit_code == 6 and "'data_manifest.json'" in str(found)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EPERM])
def test_a_place_that_cannot_be_written_is_a_setting_naming_it(code: int) -> None:
    """A read-only cache was exit 1: jsonargparse wraps the OSError of the data-facts link in a ValueError."""
    from lit_psion.core.errors import ConfigError, lit_psion_cause

    try:
        try:
            raise OSError(code, os.strerror(code), "/ro/cache/tokenizers")
        except OSError as error:
            raise ValueError("Call to compute_fn of link '_data_facts(data) --> model.init_args.data_facts' failed") \
                from error  # fmt: skip
    except ValueError as wrapped:
        found = lit_psion_cause(wrapped)
    assert isinstance(found, ConfigError) and found.exit_code == 2
    assert str(found).startswith(f"'/ro/cache/tokenizers' cannot be used ({os.strerror(code)}); give this user access")
    assert lit_psion_cause(OSError(code, os.strerror(code))) is None  # no path to name: not ours to explain


@pytest.mark.parametrize(("restarts", "said"), [(None, "another worker of the fit is gone (Connection closed by peer); "
                                                       "continue the run with --ckpt_path last"),
                                                ("100", "another worker of the mesh is gone (Connection closed by "
                                                        "peer); its agent re-forms the mesh")])  # fmt: skip
def test_a_lost_peer_is_told_with_the_recovery_that_will_happen(
    monkeypatch: pytest.MonkeyPatch, restarts: str | None, said: str
) -> None:
    """Under Lightning's own launcher (``--trainer.devices 2``) nothing restarts the fit: the user continues it."""
    from lit_psion.core.errors import WorkerCrashed, lit_psion_cause

    monkeypatch.delenv("TORCHELASTIC_MAX_RESTARTS", raising=False)
    if restarts is not None:
        monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", restarts)
    cause = lit_psion_cause(RuntimeError("Connection closed by peer"))
    assert isinstance(cause, WorkerCrashed) and str(cause).startswith(said)


@pytest.mark.parametrize("run_id", ["../x", "", ".", "..", "a/b", "/abs", "r" * 129, "latest_run.json", ".lock", "-rf",
                                    "a\nb", "tab\there", " ", " lead", "trail "])  # fmt: skip
def test_a_run_id_that_cannot_name_a_run_directory_is_exit_2(run_id: str) -> None:
    """A run id names a directory beside latest_run.json: one too long for the file system, the index's own name,
    a hidden or option-like name, or one with control characters was exit 1 or a directory no one could use."""
    from lit_psion.core.errors import ConfigError
    from lit_psion.core.run import plain_run_id

    with pytest.raises(ConfigError, match="is not a run id"):
        plain_run_id(run_id)
    assert plain_run_id("20261204-120000-abcdef") == "20261204-120000-abcdef" and plain_run_id("m1") == "m1"
