"""A checkpoint whose manifest was written over a damaged file verified "ok" and failed only when loaded: every
held file's structure is now checked where its digest is, without unpickling anything."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from lit_psion.cli import main
from lit_psion.core.checkpoint import MANIFEST_FILE
from lit_psion.core.loadable import pickle_problem, safetensors_problem, structure_problem, torch_zip_problem
from lit_psion.core.run import read_latest
from tests.helpers import fit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loadable")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3") == 0
    return root / read_latest(root) / "checkpoints" / "step-000003"


def _header(data: bytes) -> tuple[int, dict]:
    size = int.from_bytes(data[:8], "little")
    return size, json.loads(data[8 : 8 + size])


def _with_header(data: bytes, edit: Callable[[dict], None]) -> bytes:
    size, header = _header(data)
    edit(header)
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data[8 + size :]


def _first(header: dict) -> dict:
    return header[next(key for key in header if key != "__metadata__")]


def _member_flipped(data: bytes, suffix: str) -> bytes:
    """``data`` (a zip) with one byte of the member ending in ``suffix`` changed, its CRC left as it was."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    where = start + info.compress_size // 2
    return data[:where] + bytes([data[where] ^ 0xFF]) + data[where + 1 :]


def _zip_without_pickle(_: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/version", "3")
    return buffer.getvalue()


def _central(data: bytes, edit: Callable[[bytearray, int], None]) -> bytes:
    """``data`` (a zip) with the central directory entry of its data.pkl edited (``edit`` gets the entry's offset)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        name = next(i.filename for i in archive.infolist() if i.filename.endswith("data.pkl")).encode()
        entry = archive.start_dir
    changed = bytearray(data)
    while changed[entry + 46 : entry + 46 + len(name)] != name:
        entry = changed.index(b"PK\x01\x02", entry + 4)
    edit(changed, entry)
    return bytes(changed)


def _encrypted(data: bytearray, entry: int) -> None:
    data[entry + 8] |= 0x01  # the general-purpose flag's "encrypted" bit


def _deflated(data: bytearray, entry: int) -> None:
    data[entry + 10 : entry + 12] = (8).to_bytes(2, "little")  # compress type: deflate


def _bomb(_: bytes) -> bytes:
    """A small zip whose data.pkl inflates to 64 MiB: refused from its directory, never inflated."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        size = (64 << 20).to_bytes(8, "little")
        archive.writestr("archive/data.pkl", b"\x80\x04\x8e" + size + bytes(64 << 20) + b".")
    return buffer.getvalue()


DAMAGE: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "state pickle marked encrypted": ("trainer_state.pt", lambda d: _central(d, _encrypted)),
    "state pickle marked deflated": ("trainer_state.pt", lambda d: _central(d, _deflated)),
    "state a zip bomb": ("trainer_state.pt", _bomb),
    "weights dtype a list": ("model.safetensors", lambda d: _with_header(d, lambda h: _first(h).update(dtype=["F32"]))),
    "state cut in half": ("trainer_state.pt", lambda d: d[: len(d) // 2]),
    "state emptied": ("trainer_state.pt", lambda d: b""),
    "state pickle byte flipped": ("trainer_state.pt", lambda d: _member_flipped(d, "data.pkl")),
    "state tensor byte flipped": ("trainer_state.pt", lambda d: _member_flipped(d, "/data/0")),
    "state zip without data.pkl": ("trainer_state.pt", _zip_without_pickle),
    "weights cut by 4 bytes": ("model.safetensors", lambda d: d[:-4]),
    "weights with bytes appended": ("model.safetensors", lambda d: d + b"\0" * 8),
    "weights header length past the end": ("model.safetensors", lambda d: (2**40).to_bytes(8, "little") + d[8:]),
    "weights header not JSON": ("model.safetensors", lambda d: d[:8] + b"!" + d[9:]),
    "weights dtype halved": ("model.safetensors", lambda d: _with_header(d, lambda h: _first(h).update(dtype="F16"))),
    "weights shape negative": ("model.safetensors", lambda d: _with_header(d, lambda h: _first(h).update(shape=[-1]))),
    "weights unknown dtype": ("model.safetensors", lambda d: _with_header(d, lambda h: _first(h).update(dtype="F7"))),
}


def test_a_whole_checkpoint_has_no_structure_problem(checkpoint: Path) -> None:
    for name in ("model.safetensors", "trainer_state.pt"):
        assert structure_problem(name, (checkpoint / name).read_bytes()) is None, name


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_manifest_written_over_a_damaged_file_does_not_verify(
    checkpoint: Path, tmp_path: Path, case: str, capsys: pytest.CaptureFixture
) -> None:
    """Outside its run only the manifest holds a checkpoint, so rewriting its digests made the damage "ok"."""
    copy = tmp_path / "step-000003"
    shutil.copytree(checkpoint, copy)
    name, damage = DAMAGE[case]
    damaged = damage((copy / name).read_bytes())
    assert damaged != (copy / name).read_bytes()
    (copy / name).write_bytes(damaged)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(damaged).hexdigest(), "bytes": len(damaged)}
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["ckpt", "verify", str(copy)]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{name}' matches its manifest but cannot be loaded" in err[0], err


def test_the_untouched_copy_verifies(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copytree(checkpoint, tmp_path / "step-000003")
    assert main(["ckpt", "verify", str(tmp_path / "step-000003")]) == 0


@pytest.mark.parametrize("data", [b"", b"\x80\x04", b"\x80\x04N.extra", b"\x80\x04(N"])
def test_a_pickle_cut_short_or_followed_by_bytes_is_named(data: bytes) -> None:
    assert pickle_problem(data) is not None
    assert pickle_problem(b"\x80\x04N.") is None


def test_other_formats_are_named_not_raised() -> None:
    assert safetensors_problem(b"\x02\0\0\0\0\0\0\0[]") == "its header is not a JSON object"
    assert torch_zip_problem(b"PK\x03\x04 not a zip").startswith("it is not torch.save's zip format")
    assert structure_problem("notes.txt", b"anything") is None


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.uint16,
                                   torch.bool, torch.float64])  # fmt: skip
def test_every_dtype_safetensors_writes_is_whole(dtype: torch.dtype) -> None:
    """A model holding a tensor of any dtype safetensors saves (a complex buffer, a float8 variant) is loadable."""
    data = save({"t": torch.zeros(3, 2, dtype=dtype), "u": torch.ones(5)})
    assert safetensors_problem(data) is None
    assert structure_problem("model.safetensors", data) is None
