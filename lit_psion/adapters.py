"""``python -m lit_psion adapter export|inspect|merge``: LoRA adapters as verified safetensors files.

``export RUN_DIR`` writes ``<RUN_DIR>/adapter/`` (or ``--out``): ``adapter.safetensors`` (the LoRA
tensors) and ``adapter.json`` (base checkpoint digest, base model signature, targets, rank, alpha,
dtype, data manifest digest, the adapter file's sha256). ``merge ADAPTER_DIR --base BASE --out DIR``
refuses a base whose manifest digest differs from the one the adapter was trained on, folds the
adapter in, measures the largest |logit difference| between the merged and unmerged model on a
fixed probe batch, and writes ``model.safetensors`` plus ``merge.json``; export and merge each
leave an ``adapter_export`` receipt in the output directory's ``receipts.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from lit_psion.core import RunLayout, atomic_write_bytes, atomic_write_json, read_json, sha256_bytes, sha256_file
from lit_psion.core.errors import CheckpointError, ConfigError
from lit_psion.core.layout import RECEIPTS_FILE
from lit_psion.core.receipts import AdapterExportReceipt, ReceiptLog

ADAPTER_FILE, META_FILE, FORMAT_VERSION = "adapter.safetensors", "adapter.json", 1
PROBE_SEED, PROBE_SHAPE = 0, (4, 64)


def export(run_dir: Path, out: Path | None = None) -> Path:
    from lit_psion.runs import load_run

    if not RunLayout.of(run_dir).is_run():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no run.json); give an AdapterLM run")
    run = load_run(run_dir)
    state = run.state
    info = state.get("adapter")
    if info is None:
        raise ConfigError(f"the run in {str(run_dir)!r} did not train an AdapterLM (its checkpoint has no adapter)")
    tensors = {k: v.contiguous() for k, v in state["state_dict"].items() if ".lora_" in k}
    out = out or run_dir / "adapter"
    out.mkdir(parents=True, exist_ok=True)
    data = save(tensors)
    atomic_write_bytes(out / ADAPTER_FILE, data)
    meta = {"format_version": FORMAT_VERSION, **info, "dtype": str(next(iter(tensors.values())).dtype),
            "decoder_config": state["decoder_config"], "adapter_sha256": sha256_bytes(data),
            "data_manifest_digest": run.record.data_manifest_digest, "source_run": run_dir.name}  # fmt: skip
    atomic_write_json(out / META_FILE, meta)
    _receipt(out, AdapterExportReceipt(action="export", adapter_digest=meta["adapter_sha256"],
                                       base_checkpoint_digest=info["base_checkpoint_digest"],
                                       output_digest=sha256_file(out / META_FILE)))  # fmt: skip
    return out


def load_adapter(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter's metadata and tensors, after checking the tensors against the metadata's digest."""
    if not (directory / META_FILE).is_file():
        raise ConfigError(f"{str(directory)!r} holds no {META_FILE}; export an adapter first (adapter export RUN_DIR)")
    meta = read_json(directory / META_FILE)
    actual = sha256_file(directory / ADAPTER_FILE) if (directory / ADAPTER_FILE).is_file() else "missing"
    if actual != meta["adapter_sha256"]:
        raise CheckpointError(f"adapter file {str(directory / ADAPTER_FILE)!r} is corrupt: expected sha256 "
                              f"{meta['adapter_sha256']}, got {actual}")  # fmt: skip
    return meta, load_file(directory / ADAPTER_FILE)


def merge(adapter_dir: Path, base: Path, out: Path) -> dict[str, Any]:
    from lit_psion.models.adapter_lm import load_base
    from lit_psion.nn.decoder import Decoder, DecoderConfig
    from lit_psion.nn.lora import inject_lora, lora_layers

    meta, tensors = load_adapter(adapter_dir)
    state, path, base_digest = load_base(base)
    if base_digest != meta["base_checkpoint_digest"]:
        raise CheckpointError(f"adapter {str(adapter_dir)!r} was trained on base {meta['base_checkpoint_digest']} "
                              f"but {str(path)!r} is {base_digest}; merge onto the base it was trained on")  # fmt: skip
    config = DecoderConfig(**state["decoder_config"])
    model = Decoder(config)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()})
    inject_lora(model, meta["targets"], meta["rank"], meta["alpha"])
    missing, unexpected = model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items()},
                                                strict=False)  # fmt: skip
    missing_adapters = sorted(k for k in missing if ".lora_" in k)
    if unexpected or missing_adapters:
        raise CheckpointError(f"adapter tensors do not fit the base: missing {missing_adapters[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]}")  # fmt: skip
    model.eval()
    probe = torch.randint(config.vocab_size, (PROBE_SHAPE[0], min(PROBE_SHAPE[1], config.block_size)),
                          generator=torch.Generator().manual_seed(PROBE_SEED))  # fmt: skip
    with torch.no_grad():
        unmerged = model(probe)
        for layer in lora_layers(model):
            layer.merge()
        merged_logits = model(probe)
    diff = float((merged_logits - unmerged).abs().max())
    weights = {}
    for name, value in model.state_dict().items():
        if ".lora_" in name:
            continue
        weights["model." + name.replace(".base.", ".")] = value.detach().contiguous().clone()
    # A merged LM head is no longer the embedding: the merged model is untied, and is checked by
    # reloading it into a fresh Decoder and comparing its logits with the merged model's.
    merged_config = {**state["decoder_config"]}
    if "lm_head" in meta["targets"]:
        merged_config["tie_embeddings"] = False
    reloaded = Decoder(DecoderConfig(**merged_config))
    reloaded.load_state_dict({k.removeprefix("model."): v for k, v in weights.items()})
    with torch.no_grad():
        reload_diff = float((reloaded.eval()(probe) - merged_logits).abs().max())
    if reload_diff > 0:
        raise CheckpointError(f"the merged weights do not reproduce the merged model (max |logit difference| "
                              f"{reload_diff:.3g}); nothing was written")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    data = save(weights)
    atomic_write_bytes(out / "model.safetensors", data)
    record = {"format_version": FORMAT_VERSION, "adapter_sha256": meta["adapter_sha256"],
              "base_checkpoint_digest": base_digest, "decoder_config": merged_config,
              "model_sha256": sha256_bytes(data), "max_abs_logit_diff": diff,
              "probe": {"seed": PROBE_SEED, "shape": list(probe.shape)}}  # fmt: skip
    atomic_write_json(out / "merge.json", record)
    _receipt(out, AdapterExportReceipt(action="merge", adapter_digest=meta["adapter_sha256"],
                                       base_checkpoint_digest=base_digest, output_digest=record["model_sha256"],
                                       max_abs_logit_diff=diff))  # fmt: skip
    return record


def _receipt(directory: Path, body: AdapterExportReceipt) -> None:
    log = ReceiptLog(directory / RECEIPTS_FILE, run_id=directory.name)
    log.append(body)
    log.close()
