"""Adapter forgeries every digest agrees with, the export receipt re-recorded too (a forger can rehash a chain)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save

from lit_psion.core import read_json, sha256_bytes, sha256_json


def rerecord_export(adapter: Path) -> None:
    """The export's receipt log written anew for the adapter's files as they are now (a forger can rehash a chain)."""
    from lit_psion.core.receipt_log import ReceiptLog
    from lit_psion.core.receipts import AdapterExportReceipt

    log = adapter / "receipts.jsonl"
    run_id = json.loads(log.read_text().splitlines()[0])["run_id"]
    log.unlink()
    meta, rewritten = read_json(adapter / "adapter.json"), ReceiptLog(log, run_id=run_id)
    rewritten.append(AdapterExportReceipt(action="export", adapter_digest=meta["adapter_sha256"],
                                          base_checkpoint_digest=meta["base_checkpoint_digest"],
                                          output_digest=sha256_bytes((adapter / "adapter.json").read_bytes())))
    rewritten.close()


def forged(field: str | None = None, value: object = None, tensors: Callable | None = None) -> Callable[[Path], None]:
    """A forgery every digest agrees with: a field set in both copies, or the tensors rewritten, digests redone."""

    def forge(adapter: Path) -> None:
        meta = read_json(adapter / "adapter.json")
        with safe_open(adapter / "adapter.safetensors", "pt") as handle:
            header = handle.metadata()
            weights = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        if field is not None:
            meta[field] = value
            copy = json.loads(header["lit_psion.adapter"])
            header["lit_psion.adapter"] = json.dumps({**copy, field: value}, sort_keys=True)
        data = save(tensors(weights) if tensors else weights, metadata=header)
        (adapter / "adapter.safetensors").write_bytes(data)
        meta["adapter_sha256"] = sha256_bytes(data)
        meta["metadata_sha256"] = sha256_json({k: v for k, v in meta.items() if k != "metadata_sha256"})
        (adapter / "adapter.json").write_text(json.dumps(meta, indent=2))
        rerecord_export(adapter)

    return forge
