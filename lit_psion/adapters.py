"""``python -m lit_psion adapter export|inspect|merge``: LoRA adapters as verified safetensors files.

``export RUN_DIR`` writes ``<RUN_DIR>/adapter/`` (or ``--out``): ``adapter.safetensors`` (the LoRA
tensors) and ``adapter.json`` (base checkpoint digest, base model signature, targets, rank, alpha,
dtype, data manifest digest, the adapter file's sha256). The two bind each other: ``adapter.json``
ends with ``metadata_sha256``, the digest of its own canonical JSON without that field, and the
tensor file's header carries a copy of the metadata (everything but the two digests), so an edit
to either is refused (exit 4) naming the field that changed. ``inspect`` and ``merge`` verify
both, then refuse non-finite adapter tensors. ``merge ADAPTER_DIR --base BASE --out DIR``
refuses a base whose manifest digest differs from the one the adapter was trained on, folds the
adapter in, measures the largest |logit difference| between the merged and unmerged model on a
fixed probe batch, and writes ``model.safetensors`` plus ``merge.json``; export and merge each
leave an ``adapter_export`` receipt in the output directory's ``receipts.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from lit_psion.core import (
    RunLayout,
    atomic_write_bytes,
    atomic_write_json,
    canonical_json,
    read_json,
    sha256_bytes,
    sha256_file,
    sha256_json,
)
from lit_psion.core.errors import CheckpointError, ConfigError, EvidenceError, LockedError
from lit_psion.core.layout import RECEIPTS_FILE, not_a_run, refuse_output_in_a_run
from lit_psion.core.lock import LOCK_FILE, RunLock, lock_holder
from lit_psion.core.receipt_log import ReceiptLog
from lit_psion.core.receipts import AdapterExportReceipt
from lit_psion.core.text import shell_words

ADAPTER_FILE, META_FILE, FORMAT_VERSION = "adapter.safetensors", "adapter.json", 2
PROBE_SEED, PROBE_SHAPE = 0, (4, 64)
HEADER_KEY = "lit_psion.adapter"
MERGED_HEADER_KEY = "lit_psion.merged_decoder_config"
MERGED_TOKENIZER_KEY = "lit_psion.merged_tokenizer_sha256"
"""The base's tokenizer digest, in the merged weights' header too: merge.json's copy alone could be edited."""
"""The merged model's decoder config, in its safetensors header: bound to the weights by ``model_sha256``."""
"""Key, in ``adapter.safetensors``' header metadata, of the copy of ``adapter.json``'s fields."""
DIGESTS = ("adapter_sha256", "metadata_sha256")
"""The fields of ``adapter.json`` that are digests: not in the header copy (the file cannot hold its own digest)."""
REQUIRED = ("format_version", "base_checkpoint_digest", "targets", "rank", "alpha", "dtype", "decoder_config",
            "data_manifest_digest", "source_run", *DIGESTS)  # fmt: skip


def export(run_dir: Path, out: Path | None = None) -> Path:
    from lit_psion.runs import load_run

    if not RunLayout.of(run_dir).is_run():
        raise ConfigError(not_a_run(run_dir, "give an AdapterLM run"))
    run = load_run(run_dir)
    state = run.state
    info = state.get("adapter")
    if info is None:
        raise CheckpointError(f"the run in {str(run_dir)!r} did not train an AdapterLM (its checkpoint has no "
                              "adapter); give an AdapterLM run")  # fmt: skip  (exit 4, as generate and events predict)
    tensors = {k: v.contiguous() for k, v in state["state_dict"].items() if ".lora_" in k}
    _require_finite(tensors, f"the adapter of the run in {str(run_dir)!r}")
    out = out or run_dir / "adapter"
    refuse_output_in_a_run(out, own=run_dir / "adapter")
    with _writing(out, (ADAPTER_FILE, META_FILE), "an adapter export", "adapter export") as log:
        _export(run, info, tensors, out, log)
    return out


def _export(run: Any, info: dict[str, Any], tensors: dict[str, torch.Tensor], out: Path, log: ReceiptLog) -> None:
    state = run.state
    for caveat in _caveats(run):
        print(f"lit_psion: warning: {caveat}; exporting it anyway", file=sys.stderr)
    exported = {"format_version": FORMAT_VERSION, **info, "dtype": str(next(iter(tensors.values())).dtype),
                "decoder_config": state["decoder_config"], "data_manifest_digest": run.record.data_manifest_digest,
                "source_run": run.layout.run_id, "source_checkpoint": run.checkpoint.path.name,
                "source_manifest_sha256": run.checkpoint.manifest_sha256}  # fmt: skip
    from lit_psion.checkpoint_io import safetensors_bytes  # (Lightning's CheckpointIO: not for inspect)

    data = safetensors_bytes(tensors, {HEADER_KEY: canonical_json(exported).decode()})
    _say_replaced(out / META_FILE, "adapter_sha256", sha256_bytes(data), "the export of adapter")
    atomic_write_bytes(out / ADAPTER_FILE, data)
    meta = {**exported, "adapter_sha256": sha256_bytes(data)}
    meta["metadata_sha256"] = sha256_json(meta)  # of everything but itself
    atomic_write_json(out / META_FILE, meta)
    _receipt(log, AdapterExportReceipt(action="export", adapter_digest=meta["adapter_sha256"],
                                       base_checkpoint_digest=info["base_checkpoint_digest"],
                                       output_digest=sha256_file(out / META_FILE)))  # fmt: skip


def _say_replaced(record: Path, key: str, new: str, what: str) -> None:
    """A note when an earlier output's ``record`` names another ``key`` digest than ``new``: that output is replaced
    (its receipt stays in the directory's log); the same output written again says nothing."""
    try:
        old = json.loads(record.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError, RecursionError):
        return
    if isinstance(old, str) and old != new:
        print(f"lit_psion: note: {str(record.parent)!r} held {what} {old[:12]}..., which this replaces (its receipt "
              f"stays in {RECEIPTS_FILE}); give another --out to keep both", file=sys.stderr)  # fmt: skip


def _caveats(run: Any) -> list[str]:
    """What a user should know before using a run's adapter: the run failed, was stopped (so its promotion gate has
    not decided), or its promotion gate held it."""
    caveats = []
    if run.record is not None and run.record.status in ("failed", "active", "paused"):
        caveats.append(f"run {run.layout.run_id} is {run.record.status} ({run.record.failure_class or 'not finished'})")
    if run.layout is not None and run.layout.promotion.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError, RecursionError):  # unreadable: no decision
            decision = read_json(run.layout.promotion)
            if decision.get("decision") == "hold":
                caveats.append(f"its promotion gate held it ({'; '.join(decision.get('reasons') or []) or 'hold'})")
    return caveats


def _not_an_adapter(directory: Path) -> str:
    """Why ``directory`` is no adapter, and the path to give instead where one is in sight."""
    shown = str(directory)
    if directory.is_file():
        what = "is the adapter's metadata file" if directory.name == META_FILE else "is a file, not a directory"
        if directory.name in (META_FILE, ADAPTER_FILE) and (directory.parent / META_FILE).is_file():
            return f"{shown!r} {what}; give the adapter's directory, {str(directory.parent)!r}"
        return f"{shown!r} {what}; give the directory `adapter export` wrote (RUN_DIR/adapter)"
    if not directory.exists():
        run = directory.parent
        if directory.name == "adapter" and RunLayout.of(run).is_run():  # a run's adapter/, before any export
            return (f"{shown!r} does not exist: run {run.name} has exported no adapter; export one first "
                    f"(python -m lit_psion adapter export {shell_words(run)})")
        return f"{shown!r} does not exist; give the directory `adapter export` wrote (RUN_DIR/adapter)"
    if (directory / "adapter" / META_FILE).is_file():
        return f"{shown!r} holds no {META_FILE}, its adapter/ does: give {str(directory / 'adapter')!r}"
    if (directory / "merge.json").is_file():
        return (f"{shown!r} is a merged model (adapter merge --out), not an adapter: `generate` reads it; give "
                "the directory `adapter export` wrote")  # fmt: skip
    return f"{shown!r} holds no {META_FILE}; export an adapter from an adapter run first (adapter export RUN_DIR)"


def load_adapter(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter's metadata and tensors, after checking that each binds the other and the tensors are finite.

    Raises:
        ConfigError: ``directory`` holds no ``adapter.json`` (nor anything else an export writes).
        CheckpointError: ``adapter.json`` gone from an export, a field missing, ``adapter.json`` edited (naming
            the fields that changed), the tensor file changed or not a safetensors file, or a tensor not finite
            (exit 4).
    """
    meta_path, path = directory / META_FILE, directory / ADAPTER_FILE
    exported_log = not meta_path.is_file() and (directory / RECEIPTS_FILE).is_file() and (
        last_receipt(directory, "export")[0] is not None)  # (a log of something else: not an adapter, said below)
    if not meta_path.is_file() and directory.is_dir() and (path.exists() or exported_log):
        raise CheckpointError(f"{str(directory)!r} holds an export's {ADAPTER_FILE if path.exists() else RECEIPTS_FILE}"
                              f" but no {META_FILE}, which binds it: the export lost its metadata file; export the "
                              "adapter again (adapter export RUN_DIR)")  # fmt: skip
    if not meta_path.is_file():
        raise ConfigError(_not_an_adapter(directory))
    refuse_while_written(directory)
    meta = _read_meta(meta_path)
    data = path.read_bytes() if path.is_file() else None
    actual = sha256_bytes(data) if data is not None else "missing"
    exported = _exported_copy(data)
    changed = _changed_fields(meta, exported, actual)
    computed = sha256_json({k: v for k, v in meta.items() if k != "metadata_sha256"})
    if computed != meta["metadata_sha256"]:
        raise CheckpointError(f"{str(meta_path)!r} was edited after export{changed}: metadata_sha256 records "
                              f"{meta['metadata_sha256']}, its fields hash to {computed}; export it again")  # fmt: skip
    if data is None or actual != meta["adapter_sha256"]:
        raise CheckpointError(f"adapter file {str(path)!r} is corrupt: expected sha256 {meta['adapter_sha256']}, "
                              f"got {actual}")  # fmt: skip
    if changed:  # both digests re-recorded over an edit: the copy exported inside the tensor file disagrees
        raise CheckpointError(f"{str(meta_path)!r} does not match the metadata exported in {str(path)!r}{changed}; "
                              "export the adapter again")  # fmt: skip
    try:
        tensors = load(data)  # the bytes that were hashed
    except (SafetensorError, ValueError, OverflowError, RuntimeError) as error:  # both digests re-recorded over them
        why = " ".join(str(error).split())[:160]
        raise CheckpointError(f"adapter file {str(path)!r} matches adapter.json but is not a safetensors file "
                              f"({why}); export the adapter again") from error  # fmt: skip
    _require_finite(tensors, repr(str(path)))
    _require_lora_shapes(tensors, meta["rank"], meta["dtype"], repr(str(path)))
    if (problem := _against_its_receipt(directory, meta)) is not None:
        raise EvidenceError(f"{str(directory)!r}: {problem}; export the adapter again (adapter export RUN_DIR)")
    return meta, tensors


def _against_its_receipt(directory: Path, meta: dict[str, Any]) -> str | None:
    """What the export's own receipt says against ``meta`` (its adapter.json, which binds adapter.safetensors),
    or None: the directory's last ``export`` receipt names both files' digests, so an adapter.json and
    adapter.safetensors copied in from another export, which agree with each other, do not agree with it."""
    export, problem = last_receipt(directory, "export")
    if export is None:
        return problem
    said, held = export.get("adapter_digest"), meta.get("adapter_sha256")
    if said != held or export.get("output_digest") != sha256_file(directory / META_FILE):
        return (f"{META_FILE} records adapter {str(held)[:12]}..., its export receipt {str(said)[:12]}...: the "
                "files were copied in from another export, or the receipt from another adapter")  # fmt: skip
    return None


def last_receipt(directory: Path, action: str) -> tuple[dict[str, Any] | None, str | None]:
    """The body of the last ``adapter_export`` receipt of ``action`` (``export`` or ``merge``) in ``directory``'s
    own log, once its chain verifies (a receipt edited to match is not read); else None and what is wrong."""
    from lit_psion.core.chain import log_lines, parse_receipt, verify_log

    log = directory / RECEIPTS_FILE
    try:
        receipts = [parse_receipt(line) for line in log_lines(log.read_text(encoding="utf-8")) if line.strip()]
    except FileNotFoundError:
        return None, f"its receipt log {RECEIPTS_FILE} is missing (every {action} writes its receipt there)"
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:
        return None, f"its receipt log cannot be read ({type(error).__name__}: receipts verify names why)"
    if receipts and not (result := verify_log(log, run_id=receipts[0].run_id)).ok:
        return None, f"its receipt log does not verify ({result.describe()})"
    found = [r.body for r in receipts if r.kind == "adapter_export" and r.body.get("action") == action]
    return (found[-1], None) if found else (None, f"its receipt log records no {action}")


def refuse_while_written(directory: Path) -> None:
    """Refuse (exit 8) to read an export or merge that is being written: between its files it would not verify."""
    if (holder := lock_holder(directory)) is not None:
        raise LockedError(f"{str(directory)!r} is being written by {holder.describe()}; read it once that has "
                          "finished")  # fmt: skip


def _require_lora_shapes(tensors: dict[str, torch.Tensor], rank: int, dtype: str, what: str) -> None:
    """Every tensor a floating-point LoRA factor of ``rank`` in the ``dtype`` adapter.json records: A is (rank, in),
    B is (out, rank). A tensor of any other name (a base weight) is refused: merged with ``strict=False``, it would
    replace the verified base's."""
    for name, tensor in tensors.items():
        if not name.endswith((".lora_a", ".lora_b")):
            raise CheckpointError(f"{what} holds {name!r}, which is not a LoRA factor (.lora_a or .lora_b): an "
                                  "adapter changes the base only through its factors; refusing it (export the "
                                  "adapter again)")  # fmt: skip
        if not tensor.is_floating_point():
            raise CheckpointError(f"{what} holds {name} as {tensor.dtype}, not floating point; refusing to use it")
        if str(tensor.dtype) != dtype:  # what inspect reports and merge promises: the values as trained
            raise CheckpointError(f"{what} holds {name} as {tensor.dtype}, where adapter.json records dtype "
                                  f"{dtype!r}; export the adapter again")  # fmt: skip
        factor = "a" if name.endswith("lora_a") else "b" if name.endswith("lora_b") else None
        if factor is not None and (tensor.ndim != 2 or tensor.shape[0 if factor == "a" else 1] != rank):
            shape = "(rank, in)" if factor == "a" else "(out, rank)"
            raise CheckpointError(f"{what} holds {name} of shape {tuple(tensor.shape)}, not {shape} with "
                                  f"adapter.json's rank {rank}; export the adapter again")  # fmt: skip


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = read_json(path)
    except (ValueError, RecursionError) as error:  # (a UnicodeDecodeError is a ValueError)
        why = "nested too deeply to read" if isinstance(error, RecursionError) else str(error)
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({why}); export the adapter again") from error
    if not isinstance(meta, dict):
        raise CheckpointError(f"{str(path)!r} is not a JSON object; export the adapter again")
    missing = [field for field in REQUIRED if field not in meta]
    if missing:
        raise CheckpointError(f"{str(path)!r} lacks field(s) {', '.join(map(repr, missing))} (edited, or written "
                              f"before format {FORMAT_VERSION}); export the adapter again")  # fmt: skip
    for field, problem in _field_problems(meta):
        raise CheckpointError(f"{str(path)!r}: {field} is {meta[field]!r}, {problem}; export the adapter again")
    return meta


def _field_problems(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """The fields of ``meta`` whose values are not of their kind (what merge and inspect compute with)."""
    from lit_psion.nn.lora import ALPHA_MAX, TARGETS

    number = lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    checks = {
        "rank": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "not a positive integer"),
        "alpha": (lambda v: number(v) and 0 < v <= ALPHA_MAX, f"not a number in (0, {ALPHA_MAX:g}]"),
        "targets": (lambda v: isinstance(v, list) and bool(v) and all(isinstance(t, str) and t in TARGETS for t in v),
                    f"not a list of LoRA targets ({', '.join(TARGETS)})"),
        "decoder_config": (lambda v: isinstance(v, dict), "not a decoder config (a JSON object)"),
        **{name: (lambda v: isinstance(v, str), "not a string")
           for name in ("base_checkpoint_digest", "dtype", *DIGESTS)},
    }  # fmt: skip
    return [(field, problem) for field, (ok, problem) in checks.items() if not ok(meta[field])]


def _exported_copy(data: bytes | None) -> dict[str, Any] | None:
    """The metadata export put in the tensor file's header (None if the header holds none)."""
    if data is None:
        return None
    try:
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        copy = json.loads(header["__metadata__"][HEADER_KEY])
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return copy if isinstance(copy, dict) else None


def _changed_fields(meta: dict[str, Any], exported: dict[str, Any] | None, actual: str) -> str:
    """``" (field: exported X, now Y; ...)"`` for the fields of ``meta`` that differ from what was exported."""
    changes = []
    if exported is not None:
        for field in sorted((meta.keys() | exported.keys()) - set(DIGESTS)):
            if meta.get(field, "<deleted>") != exported.get(field, "<absent>"):
                changes.append(f"{field}: exported {exported.get(field, '<absent>')!r}, now "
                               f"{meta.get(field, '<deleted>')!r}")  # fmt: skip
    if actual not in ("missing", meta["adapter_sha256"]) and exported is not None:
        changes.append(f"adapter_sha256: now {meta['adapter_sha256']}, the tensor file's is {actual}")
    return f" ({'; '.join(changes)})" if changes else ""


def _require_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    bad = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise CheckpointError(f"{what} holds non-finite values in {len(bad)} tensor(s) ({', '.join(bad[:3])}); "
                              "refusing to use it")  # fmt: skip


def merge(adapter_dir: Path, base: Path, out: Path) -> dict[str, Any]:
    refuse_output_in_a_run(out)
    with _writing(out, ("model.safetensors", "merge.json"), "a merge", "adapter merge") as log:
        return _merge(adapter_dir, base, out, log)


def _merge(adapter_dir: Path, base: Path, out: Path, log: ReceiptLog) -> dict[str, Any]:
    from lit_psion.checkpoint_io import safetensors_bytes
    from lit_psion.models.adapter_lm import load_base
    from lit_psion.nn.decoder import Decoder, DecoderConfig
    from lit_psion.nn.lora import inject_lora, lora_layers

    meta, tensors = load_adapter(adapter_dir)
    state, path, base_digest, base_tokenizer = load_base(base)
    if base_digest != meta["base_checkpoint_digest"]:
        raise CheckpointError(f"adapter {str(adapter_dir)!r} was trained on base {meta['base_checkpoint_digest']} "
                              f"but {str(path)!r} is {base_digest}; merge onto the base it was trained on")  # fmt: skip
    config = DecoderConfig(**state["decoder_config"])
    model = Decoder(config)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()})
    try:
        inject_lora(model, meta["targets"], meta["rank"], meta["alpha"], check_rank=False)
    except ConfigError as error:  # rank, alpha or targets a fine-tune would refuse: the file's, not a flag's
        raise CheckpointError(f"{str(adapter_dir / META_FILE)!r} records LoRA settings this base cannot take "
                              f"({error}); export the adapter again") from error  # fmt: skip
    try:
        missing, unexpected = model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items()},
                                                    strict=False)  # fmt: skip
    except RuntimeError as error:  # shapes other than adapter.json's rank and targets say
        raise CheckpointError(f"adapter tensors in {str(adapter_dir)!r} do not fit the base with the rank and targets "
                              f"adapter.json records ({str(error).splitlines()[-1].strip()}); export the adapter "
                              "again") from error  # fmt: skip
    missing_adapters = sorted(k for k in missing if ".lora_" in k)
    if unexpected or missing_adapters:
        raise CheckpointError(f"adapter tensors do not fit the base: missing {missing_adapters[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]}")  # fmt: skip
    model.eval()
    probe = torch.randint(config.vocab_size, (PROBE_SHAPE[0], min(PROBE_SHAPE[1], config.block_size)),
                          generator=torch.Generator().manual_seed(PROBE_SEED))  # fmt: skip
    with torch.no_grad():
        unmerged = model(probe)
        try:
            for layer in lora_layers(model):
                layer.merge()
        except ValueError as error:  # finite factors whose product overflows the weight's dtype
            raise CheckpointError(f"merging {str(adapter_dir)!r} onto {str(path)!r} gives a weight that is not "
                                  "finite (its factors are finite, their update overflows); nothing was written") \
                from error
        merged_logits = model(probe)
    if not torch.isfinite(merged_logits).all():
        raise CheckpointError(f"the base merged with {str(adapter_dir)!r} gives non-finite logits; nothing was written")
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
    header = {MERGED_HEADER_KEY: canonical_json(merged_config).decode()}
    data = safetensors_bytes(weights, header | ({MERGED_TOKENIZER_KEY: base_tokenizer} if base_tokenizer else {}))
    _say_replaced(out / "merge.json", "model_sha256", sha256_bytes(data), "the merged model")
    atomic_write_bytes(out / "model.safetensors", data)
    record = {"format_version": FORMAT_VERSION, "adapter_sha256": meta["adapter_sha256"],
              "base_checkpoint_digest": base_digest, "tokenizer_sha256": base_tokenizer,
              "decoder_config": merged_config, "model_sha256": sha256_bytes(data), "max_abs_logit_diff": diff,
              "probe": {"seed": PROBE_SEED, "shape": list(probe.shape)}}  # fmt: skip
    atomic_write_json(out / "merge.json", record)
    _receipt(log, AdapterExportReceipt(action="merge", adapter_digest=meta["adapter_sha256"],
                                       base_checkpoint_digest=base_digest, output_digest=record["model_sha256"],
                                       max_abs_logit_diff=diff))  # fmt: skip
    return record


@contextlib.contextmanager
def _writing(out: Path, files: tuple[str, ...], what: str, purpose: str) -> Iterator[ReceiptLog]:
    """``out`` created if need be and locked for the whole command (one writer: two appending to its receipt log
    at once would fork its chain), then its log (:func:`_output_log`). A refusal leaves no directory it made.

    Raises:
        ConfigError: ``out`` is a file, cannot be made, or holds anything else (an export, a run, a runs root).
        LockedError: another process is writing ``out`` (exit 8, naming it); nothing is written.
        ReceiptChainError: its receipt log does not verify.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a new or empty directory")
    _refuse_others(out, files, what)  # before its lock: a refused --out is left without a lock file of ours
    made = next((place for place in (*reversed(out.parents), out) if not place.exists()), None)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--out {str(out)!r} cannot be made ({error.strerror}); give a directory you can "
                          "write") from error  # fmt: skip
    with RunLock(out, purpose=f"{purpose} into {out}"):
        try:
            yield _output_log(out, files, what)
        except BaseException:
            if made is not None and {p.name for p in out.iterdir()} <= {LOCK_FILE}:
                _remove_made(out, made)  # while still locked: no second writer takes a lock file about to go
            raise


def _remove_made(out: Path, made: Path) -> None:
    """The directories from ``made`` down to ``out`` that a refused command created (``out`` holding only its
    lock file), as long as nothing else appeared in them meanwhile."""
    (out / LOCK_FILE).unlink(missing_ok=True)
    for place in (out, *out.parents):
        try:
            place.rmdir()
        except OSError:
            return
        if place == made:
            return


def _output_log(out: Path, files: tuple[str, ...], what: str) -> ReceiptLog:
    """The receipt log of the output directory ``out``, checked before anything is written there: ``out`` is new,
    empty, or ``what`` written before (only ``files``, its log and its lock file), and that log verifies.

    Raises:
        ConfigError: ``out`` holds anything else (an export, a run, a runs root).
        ReceiptChainError: its receipt log does not verify.
    """
    _refuse_others(out, files, what)  # again, under the lock
    path = out / RECEIPTS_FILE
    try:
        first = json.loads(path.read_bytes().split(b"\n", 1)[0]) if path.is_file() else None
    except (ValueError, RecursionError):
        first = None  # ReceiptLog's verification below names what is wrong with it (exit 5)
    run_id = first.get("run_id") if isinstance(first, dict) and isinstance(first.get("run_id"), str) else out.name
    return ReceiptLog(path, run_id=run_id)  # verifies what is there (the directory may have been renamed)


def _refuse_others(out: Path, files: tuple[str, ...], what: str) -> None:
    """Refuse ``out`` if it holds anything but ``files``, its receipt log and its lock (an export, a run, a root)."""
    others = sorted(p.name for p in out.iterdir() if p.name not in (*files, RECEIPTS_FILE, LOCK_FILE)
                    and not (p.name.startswith(".") and p.name.endswith(".tmp"))) if out.is_dir() else []  # fmt: skip
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ConfigError(f"--out {str(out)!r} holds {shown}, so it is not {what} directory; give a new or empty "
                          "directory")  # fmt: skip


def _receipt(log: ReceiptLog, body: AdapterExportReceipt) -> None:
    log.append(body)
    log.close()
