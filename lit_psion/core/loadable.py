"""Whether a checkpoint file's bytes have the structure its loader reads, checked without importing torch.

A checkpoint verifies against its manifest's digests; a manifest written (or rewritten) over a file that was
already cut short or overwritten verified "ok" and failed only when loaded. These checks read the formats
themselves, from bytes :func:`~lit_psion.core.checkpoint.verify_checkpoint` already holds:

- ``*.safetensors``: the 8-byte header length, a JSON header whose every tensor has a known dtype, a shape
  of non-negative integers and data offsets that tile the data exactly (as ``safetensors`` requires);
- ``*.pt`` (``torch.save``'s zip format): every member's CRC, and the one ``data.pkl`` a whole pickle;
- ``.metadata`` (DCP's pickle): a whole pickle.

None of them unpickles anything: a pickle is walked opcode by opcode (``pickletools``), so the loaders' own
allowlists (``weights_only=True``, the DCP metadata unpickler) still decide which objects a file may build.
"""

from __future__ import annotations

import io
import json
import math
import pickletools
import zipfile
from collections.abc import Callable

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E5M2FNUZ": 1, "F8_E4M3FNUZ": 1,
               "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8,
               "U64": 8, "F64": 8, "C64": 8}  # fmt: skip
"""The bytes per element of each whole-byte safetensors dtype (the sub-byte F4 and F6 kinds torch does not save)."""


def structure_problem(name: str, data: bytes) -> str | None:
    """What keeps ``data`` (the file ``name`` of a checkpoint) from loading; None if its structure is whole."""
    check: Callable[[bytes], str | None] | None = None
    if name.endswith(".safetensors"):
        check = safetensors_problem
    elif name.endswith(".pt"):
        check = torch_zip_problem
    elif name.rsplit("/", 1)[-1] == ".metadata":
        check = pickle_problem
    if check is None:
        return None
    try:
        return check(data)
    except Exception as error:  # any way the bytes fail to parse is a reason, never a crash
        return f"it cannot be read ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"


def safetensors_problem(data: bytes) -> str | None:
    if len(data) < 8:
        return f"{len(data)} bytes, shorter than a safetensors header"
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        return f"its header says {size} bytes, the file holds {len(data) - 8} after the length"
    try:
        header = json.loads(data[8 : 8 + size])
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        return f"its header is not JSON ({error})"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or entry["dtype"] not in DTYPE_BYTES:
            return f"tensor {key!r} has no known dtype"
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            return f"tensor {key!r} has shape {shape!r}"
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
                and 0 <= offsets[0] <= offsets[1]):  # fmt: skip
            return f"tensor {key!r} has data offsets {offsets!r}"
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[entry["dtype"]]:
            return f"tensor {key!r} ({entry['dtype']} {shape}) spans {offsets[1] - offsets[0]} bytes"
        spans.append(offsets)
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            return "its tensors' data offsets overlap or leave a gap"
        end = stop
    if end != len(data) - 8 - size:
        return f"its header accounts for {end} bytes of data, the file holds {len(data) - 8 - size}"
    return None


def torch_zip_problem(data: bytes) -> str | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            # torch.save stores every member uncompressed: a compressed one could inflate far past the file's size
            if packed := [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED
                          or i.file_size > len(data)]:  # fmt: skip
                return f"its member {packed[0]!r} is compressed or larger than the file, which torch.save never writes"
            if (bad := archive.testzip()) is not None:
                return f"its member {bad!r} fails its CRC"
            pickles = [member for member in archive.namelist() if member.rsplit("/", 1)[-1] == "data.pkl"]
            if len(pickles) != 1:
                return f"it holds {len(pickles)} data.pkl, torch.save writes one"
            return pickle_problem(archive.read(pickles[0]))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        return f"it is not torch.save's zip format ({error})"


def pickle_problem(data: bytes) -> str | None:
    try:
        for opcode, _, position in pickletools.genops(data):
            if opcode.name == "STOP":
                return None if position == len(data) - 1 else "bytes follow its pickle's end"
    except (ValueError, EOFError, UnicodeDecodeError, IndexError) as error:
        return f"its pickle is cut short or damaged ({error})"
    return "its pickle has no end"
