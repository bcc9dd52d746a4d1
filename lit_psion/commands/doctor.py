"""``python -m lit_psion doctor RUN_DIR``: check everything a run holds, one verdict line per artifact.

Beyond the run directory's own files (core's audit), it checks the text files a corpus run trained on (as a resume
started here would read them), and what the run reads from its cache (the config's
``cache_dir``, else ``$LIT_PSION_CACHE``): a corpus run's token cache and tokenizer (or the tokenizer file it was
given) and a MOSAIC run's event tokenizer, against the data manifest; and an exported adapter (``RUN_DIR/adapter``).

Exit 0 when every artifact verifies; otherwise the exit code of the first failing artifact's class
(3 data, 4 checkpoint, 5 evidence), after every line is printed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import os
import sys
from pathlib import Path

from lit_psion.commands import CommandParser
from lit_psion.commands.receipts import refuse_a_live_run, run_layout
from lit_psion.commands.records import metrics_problem
from lit_psion.core import RunLayout, read_json, sha256_file
from lit_psion.core.audit import Verdict, audit_run, linked_record
from lit_psion.core.errors import DataError, EvidenceError, LitPsionError
from lit_psion.core.files import read_plain
from lit_psion.core.manifest import DataManifest
from lit_psion.core.vouched import unvouched_metric


class DoctorFailed(SystemExit):
    """Some artifact failed: the verdicts are printed; the exit code is the first failure's."""


def main(args: list[str]) -> None:
    parser = CommandParser("python -m lit_psion doctor")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tokens", action="store_true", help="also tokenize a corpus run's sources again, from "
                        "scratch, and hold the data manifest's token digests to them (seconds per MB of text; "
                        "catches a run that read an altered shared token cache)")  # fmt: skip
    parsed = parser.parse_args(args)
    layout = run_layout(parsed.run_dir)
    refuse_a_live_run(layout, "doctor")
    audited = audit_run(layout)
    chain = [verdict.ok for verdict in audited if verdict.artifact == layout.receipts.name]
    verdicts = [*audited, *_metrics(layout, bool(chain) and all(chain)), *_membership(layout), *_sources(layout),
                *_token_cache(layout), *_adapter(layout)]
    verdicts += _tokens(layout, verdicts) if parsed.tokens else []
    verdicts = [_held_to_its_source(layout, verdict) for verdict in verdicts]
    for verdict in verdicts:
        print(verdict.line())
    failed = [verdict for verdict in verdicts if not verdict.ok]
    if failed:
        print(f"lit_psion: doctor: {len(failed)} of {len(verdicts)} artifacts failed", file=sys.stderr)
        raise DoctorFailed(failed[0].exit_code)
    print(f"all {len(verdicts)} artifacts verified")


def _held_to_its_source(layout: RunLayout, verdict: Verdict) -> Verdict:
    """A consolidated copy that matches its manifest and receipt, gathered again from the sharded checkpoint it names
    and compared: its receipt log is anchored nowhere, so a forged copy with a forged receipt would pass alone."""
    prefix = f"{layout.consolidated.name}/"
    if not verdict.ok or not verdict.artifact.startswith(f"{prefix}step-"):
        return verdict
    from lit_psion.consolidation import held_copy  # (torch: only for a run with consolidated copies)
    from lit_psion.core.checkpoint import verify_checkpoint
    from lit_psion.core.errors import CheckpointError

    try:
        held_copy(verify_checkpoint(layout.consolidated / verdict.artifact.removeprefix(prefix)), layout)
    except (CheckpointError, EvidenceError) as error:
        return Verdict(verdict.artifact, False, str(error), error.exit_code)
    return Verdict(verdict.artifact, True, f"{verdict.detail}; the gathering of {verdict.artifact.removeprefix(prefix)}"
                                           ", compared")  # fmt: skip


def _metrics(layout: RunLayout, chain_verified: bool) -> list[Verdict]:
    """metrics.csv, read as a resume reads it (by step), if the run has one, and every value in it a receipt records
    held to that receipt (once the chain verifies), as ``compare`` holds them before it shows them."""
    if not (layout.metrics.exists() or layout.metrics.is_symlink()):
        return []
    if layout.metrics.is_symlink():  # (compare refuses it too)
        return [linked_record(layout.metrics)]
    if (problem := metrics_problem(layout)) is not None:
        return [Verdict(layout.metrics.name, False, f"a resume cannot continue it ({problem}); restore it from a "
                        "backup, or move it aside", EvidenceError.exit_code)]  # fmt: skip
    if (problem := _not_a_number(layout.metrics)) is not None:  # a resume continues it; compare and reports cannot
        return [Verdict(layout.metrics.name, False, f"{problem}, which compare and the dashboard cannot read (a run's "
                        "logger writes numbers only); restore it from a backup, or move it aside",
                        EvidenceError.exit_code)]  # fmt: skip
    if chain_verified:
        from lit_psion.core.metrics_csv import read_metrics  # (its rows as compare reads them)

        if (edit := unvouched_metric(layout, read_metrics(layout.run_dir))) is not None:
            return [Verdict(layout.metrics.name, False, f"{edit}; restore it from a backup",
                            EvidenceError.exit_code)]  # fmt: skip
        return [Verdict(layout.metrics.name, True, "readable by step; every value a receipt records matches it")]
    return [Verdict(layout.metrics.name, True, "readable by step")]


def _not_a_number(metrics: Path) -> str | None:
    """The first metric value in ``metrics`` (read by step already) that is not a number, said as where it is."""
    text = metrics.read_text(encoding="utf-8")
    for row in csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1], newline="")):
        for key, value in row.items():
            if key is None:
                return f"the row of step {row['step']} has more values than the header has columns"
            if key in ("step", "epoch") or value in (None, ""):
                continue
            try:
                float(value)
            except (TypeError, ValueError):
                return f"the value of {key!r} at step {row['step']} is {str(value)[:40]!r}, not a number"
    return None


def _membership(layout: RunLayout) -> list[Verdict]:
    """A mesh run's membership: each receipted epoch follows the one before it (epoch, members, world size), and
    membership.json, which carries no digest, agrees with the last epoch the receipts and checkpoint record."""
    from lit_psion.core.membership import receipted_epochs, run_membership

    try:
        epochs = receipted_epochs(layout.receipts, layout.run_id)
    except (OSError, ValueError):
        return []  # (the receipts verdict says what is wrong with the chain)
    if not epochs and not (layout.membership.exists() or layout.membership.is_symlink()):
        return []
    name = layout.membership.name
    for before, after in itertools.pairwise(epochs):
        said = (before["epoch"] + 1, set(before["members"]), before["world_size"])
        if (after["epoch"], set(after["previous_members"]), after["previous_world_size"]) != said:
            return [Verdict(name, False, f"the membership receipt of epoch {after['epoch']} does not follow epoch "
                            f"{before['epoch']}'s (its previous members {after['previous_members']}, world size "
                            f"{after['previous_world_size']}): an epoch was started from an edited {name}; the run's "
                            "membership history is not the mesh's", EvidenceError.exit_code)]  # fmt: skip
    try:
        last, _ = run_membership(layout, epochs)
    except EvidenceError as error:
        return [Verdict(name, False, str(error), error.exit_code)]
    except (OSError, ValueError):
        return []  # (the receipts' verdict says what is wrong with the chain)
    where = f"epoch {last.epoch}, world size {last.world_size}" if last is not None else "no epoch yet"
    return [Verdict(name, True, f"{len(epochs)} receipted epoch(s), each following the last; the mesh continues "
                    f"from {where}")]


def _sources(layout: RunLayout) -> list[Verdict]:
    """The text files a corpus run's manifest records, where a resume or an evaluation started here reads them: one
    whose content changed fails (exit 3: those refuse it); one not found is said, not failed (data moved elsewhere
    leaves the run as sound as it was)."""
    import sysconfig

    try:
        manifest = DataManifest.from_json_dict(read_json(layout.data_manifest))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return []  # generated data (no files), or a manifest its own verdict refuses
    changed, missing = [], []
    for source in manifest.sources:
        stdlib = source.path.removeprefix("stdlib/") if source.path.startswith("stdlib/") else None
        path = Path(sysconfig.get_paths()["stdlib"]) / stdlib if stdlib else Path(source.path).expanduser()
        if not path.is_file():
            (changed if path.exists() else missing).append(source.path)  # a directory, a FIFO: no text to read
        elif sha256_file(path) != source.sha256:
            changed.append(source.path)
    here = "" if all(Path(s.path).expanduser().is_absolute() for s in manifest.sources) else \
        f" (relative paths looked up from {os.getcwd()!r}, as a resume started here reads them)"  # fmt: skip
    if changed:
        return [Verdict("data sources", False, f"{changed[0]!r} is not the text the run trained on (its sha256 differs "
                        f"from the data manifest's){here}: a resume or an evaluation refuses it; restore it, or give "
                        "other text under another path", DataError.exit_code)]  # fmt: skip
    if not missing and (added := _glob_gains(layout, [source.path for source in manifest.sources])) is not None:
        return [Verdict("data sources", False, f"{added[1]!r} now also matches {added[0]!r}{here}, so a resume reads "
                        "a file the run did not train on and refuses the data (files added); move it out, or narrow "
                        "the glob in a new run", DataError.exit_code)]  # fmt: skip
    found = f"{len(manifest.sources) - len(missing)} of {len(manifest.sources)} match the data manifest"
    gone = f"; not found: {', '.join(map(repr, missing[:3]))} (a resume or an evaluation needs them)" if missing else ""
    return [Verdict("data sources", True, f"{found}{gone}{here}")]


def _glob_gains(layout: RunLayout, trained: list[str]) -> tuple[str, str] | None:
    """(a file, the glob of the run's config.yaml that matches it) where the files a resume started here would read
    (its globs expanded now, taken whole within ``max_bytes``, as the data module takes them) are not the manifest's
    ``trained`` ones; None when they are, or when that cannot be told (no corpus config, the stdlib)."""
    import glob

    import yaml

    try:
        data = yaml.safe_load(read_plain(layout.config))["data"]["init_args"]
        files, cap = data["files"], data.get("max_bytes")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError, KeyError, TypeError):
        return None
    entries = [files] if isinstance(files, str) else files
    if not isinstance(entries, list) or "stdlib" in entries or not isinstance(cap, int | None):
        return None
    read: list[tuple[str, str]] = []  # (file, the entry that gives it)
    for entry in map(str, entries):
        if Path(entry).is_file() or not glob.has_magic(entry):
            read.append((entry, entry))
        else:
            read += [(match, entry) for match in sorted(glob.glob(entry, recursive=True)) if Path(match).is_file()]
    taken, total = [], 0
    for name, entry in read:
        total += Path(name).stat().st_size if Path(name).is_file() else 0
        if cap is not None and total > cap:
            break
        taken.append((name, entry))
    return next(((name, entry) for name, entry in taken if name not in trained and name != entry), None)


def _token_cache(layout: RunLayout) -> list[Verdict]:
    """The tokens a corpus run's manifest commits to, or a MOSAIC run's event tokenizer, in the cache the run reads
    (its config's ``cache_dir``, else ``$LIT_PSION_CACHE``)."""
    from lit_psion.datamodules.token_cache import check_token_cache, default_cache_dir  # not the corpus stack

    try:
        record = read_json(layout.data_manifest)
    except (OSError, ValueError, RecursionError):
        return []  # no manifest: its own verdict says so
    cache_dir = _configured_cache_dir(layout)
    if isinstance(record, dict) and record.get("kind") == "event_traces":
        return [_relative(_event_tokenizer(record, default_cache_dir(cache_dir)), cache_dir)]
    try:
        manifest = DataManifest.from_json_dict(record)
    except (ValueError, KeyError, TypeError, AttributeError):
        return []  # generated data (nothing cached), or a manifest its own verdict refuses
    try:
        manifest.inputs_digest()  # (the cache's key)
    except ValueError as error:  # a value canonical JSON cannot hash (NaN): the manifest's own verdict names it too
        return [Verdict("token cache", False, f"{layout.data_manifest.name} cannot be hashed to find it ({error})",
                        DataError.exit_code)]  # fmt: skip
    tokenizer = _corpus_tokenizer(layout, manifest, default_cache_dir(cache_dir))
    try:
        return [_relative(tokenizer, cache_dir),
                _relative(Verdict("token cache", True, check_token_cache(manifest, cache_dir)), cache_dir)]
    except LitPsionError as error:
        return [_relative(tokenizer, cache_dir),
                _relative(Verdict("token cache", False, str(error), error.exit_code), cache_dir)]


def _tokens(layout: RunLayout, verdicts: list[Verdict]) -> list[Verdict]:
    """The sources tokenized again (:func:`~lit_psion.commands.retokenized.retokenized`; ``--tokens``: torch and the
    corpus stack), once every other verdict passed and every source was found: a run whose records or text fail is
    named by those verdicts already."""
    found = [v for v in verdicts if v.artifact == "data sources" and v.ok and "not found" not in v.detail]
    if not found or not all(verdict.ok for verdict in verdicts):
        return []
    import yaml

    from lit_psion.commands.retokenized import retokenized  # (the corpus stack: only for a run it checks)

    try:
        config = yaml.safe_load(read_plain(layout.config))["data"]
        manifest = DataManifest.from_json_dict(read_json(layout.data_manifest))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError, KeyError, TypeError, ValueError):
        return []  # (their own verdicts passed: nothing here to tokenize)
    return [retokenized(layout, manifest, config)] if isinstance(config, dict) else []


def _corpus_tokenizer(layout: RunLayout, manifest: DataManifest, cache_dir: Path) -> Verdict:
    """The tokenizer a resume of a corpus run would read: its ``tokenizer_file``, else the shared cache's entry for
    its text and settings, against the manifest's ``tokenizer_digest``."""
    from lit_psion.datamodules.tokenizer import tokenizer_cache_path, tokenizer_key

    data = _configured_data(layout)
    given = data.get("tokenizer_file")
    if isinstance(given, str) and given:
        path = Path(given).expanduser()
        actual = sha256_file(path) if path.is_file() else None
        flag, own = f"--data.tokenizer_file {given!r}", f"--data.tokenizer_file {layout.tokenizer}"
        if actual == manifest.tokenizer_digest:
            return Verdict("tokenizer", True, f"{flag} matches the manifest's tokenizer_digest")
        if actual is None:  # moved elsewhere, as a source file may be: the run is as sound as it was
            return Verdict("tokenizer", True, f"{flag} not found (a resume needs it, or {own})")
        return Verdict("tokenizer", False, f"{flag} (sha256 {actual[:16]}...) is not the tokenizer the run trained "
                       f"with ({manifest.tokenizer_digest[:16]}...): a resume refuses it; put it back, or resume with "
                       f"{own}", DataError.exit_code)  # fmt: skip
    kind, vocab_size = data.get("tokenizer", "bpe"), data.get("vocab_size")
    try:
        path = tokenizer_cache_path(cache_dir, kind, vocab_size, tokenizer_key(manifest))
    except (TypeError, ValueError) as error:  # settings no cache key is made of: the config's own verdict says so
        return Verdict("tokenizer", False, f"cannot be looked up from config.yaml ({error})", DataError.exit_code)
    return _cached_tokenizer("tokenizer", path, cache_dir, manifest.tokenizer_digest, ("resume", "a resume"))


def _relative(verdict: Verdict, cache_dir: str | None) -> Verdict:
    """A cache the run's config names by a relative path is where the fit's working directory put it, which
    this process cannot know: say which directory the verdict was reached in."""
    named = "the run's data.cache_dir"
    if cache_dir is None and (cache_dir := os.environ.get("LIT_PSION_CACHE")):  # what the run's cache defaults to
        named = "LIT_PSION_CACHE"
    if cache_dir is None or Path(cache_dir).expanduser().is_absolute():
        return verdict
    return dataclasses.replace(verdict, detail=f"{verdict.detail}; {named} {cache_dir!r} is relative, looked up "
                               f"from {os.getcwd()!r}: run doctor from the directory the fit ran in")  # fmt: skip


def _configured_cache_dir(layout: RunLayout) -> str | None:
    """The ``data.init_args.cache_dir`` the run's config.yaml gives, if any."""
    value = _configured_data(layout).get("cache_dir")
    return value if isinstance(value, str) and value else None


def _configured_data(layout: RunLayout) -> dict:
    """The ``data.init_args`` of the run's config.yaml (empty when it has none it can read)."""
    import yaml

    try:
        data = yaml.safe_load(read_plain(layout.config))["data"]["init_args"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError, KeyError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def _event_tokenizer(record: dict, cache_dir: Path) -> Verdict:
    """A MOSAIC run's event tokenizer, which stays in the cache: the one its manifest's ``tokenizer_digest`` pins."""
    from lit_psion.datamodules.tokenizer import event_tokenizer_path

    try:
        path = event_tokenizer_path(record, cache_dir)
    except (ValueError, TypeError, RecursionError) as error:  # a manifest field no cache key is made of
        return Verdict("event tokenizer", False, f"cannot be looked up from data_manifest.json ({error})",
                       DataError.exit_code)  # fmt: skip
    return _cached_tokenizer("event tokenizer", path, cache_dir, record.get("tokenizer_digest"),
                             ("events predict or resume", "events predict"))  # fmt: skip


def _cached_tokenizer(name: str, path: Path, cache_dir: Path, expected: object, readers: tuple[str, str]) -> Verdict:
    """The shared cache's tokenizer entry at ``path`` against the digest the run's manifest pins (``expected``):
    absent is fine (trained again when needed), another tokenizer is not. ``readers``: what next reads the entry,
    and what refuses it when its digest record was rewritten to match it."""
    from lit_psion.datamodules.tokenizer import trusted_digest

    try:
        actual = sha256_file(path) if path.is_file() else None
    except OSError as error:
        return Verdict(name, False, f"{str(path)!r} cannot be read ({error})", DataError.exit_code)
    if actual is None:
        return Verdict(name, True, f"absent from {str(cache_dir)!r} (trained again from the run's text and "
                       "settings when needed, and checked against the manifest then)")  # fmt: skip
    if actual != expected:
        then = (f"the next {readers[0]} sets it aside and trains it again (its own digest record disagrees too)"
                if trusted_digest(path) != actual else f"{readers[1]} refuses it (its digest record was rewritten to "
                "match); use the cache the run trained with, or move the entry aside to train it again")  # fmt: skip
        return Verdict(name, False, f"{str(path)!r} (sha256 {actual[:16]}...) is not the tokenizer the run trained "
                       f"with ({str(expected)[:16]}...): {then}", DataError.exit_code)  # fmt: skip
    return Verdict(name, True, f"matches the manifest's tokenizer_digest ({str(path)!r})")


def _adapter(layout: RunLayout) -> list[Verdict]:
    directory = layout.run_dir / "adapter"
    if not directory.is_dir():
        return []
    from lit_psion.adapters import load_adapter

    try:
        meta, tensors = load_adapter(directory)
        checkpoint = _exported_from(layout, meta, tensors)
    except LitPsionError as error:
        return [Verdict("adapter/", False, str(error), error.exit_code)]
    return [Verdict("adapter/", True, f"{len(tensors)} tensors match adapter.json (rank {meta['rank']}, "
                                      f"alpha {meta['alpha']}) and the run's {checkpoint}")]  # fmt: skip


def _exported_from(layout: RunLayout, meta: dict, tensors: dict) -> str:
    """Where in the run ``adapter/`` was exported from: its run, and the checkpoint whose tensors it holds.

    Raises:
        CheckpointError: another run's adapter, or tensors that are not those of the checkpoint it names (exit 4).
    """
    import torch

    from lit_psion.checkpoint_io import load_verified
    from lit_psion.core.audit import receipted_checkpoints, verify_in_its_run
    from lit_psion.core.checkpoint import resolve_checkpoint
    from lit_psion.core.errors import CheckpointError
    from lit_psion.core.layout import step_of

    if meta.get("source_run") != layout.run_id:
        raise CheckpointError(f"exported from run {meta.get('source_run')!r}, not from this run; export this run's "
                              "adapter again (adapter export RUN_DIR)")  # fmt: skip
    receipted = receipted_checkpoints(layout)
    latest = resolve_checkpoint(layout, quiet=True, receipted=receipted)
    name = meta.get("source_checkpoint") or latest.path.name  # exports before the field: the run's latest
    if not layout.checkpoints.joinpath(name).is_dir():  # removed by retention since: its receipt still binds it
        recorded = receipted.recorded.get(step_of(name) or -1, (None, None))[0]
        if recorded is None or recorded != meta.get("source_manifest_sha256"):
            raise CheckpointError(f"it names {name}, which is neither here nor a durable checkpoint the receipts "
                                  "record; export it again (adapter export RUN_DIR)")  # fmt: skip
        return f"{name} (no longer kept; its receipt matches)"
    checkpoint = verify_in_its_run(layout.checkpoints / name)
    state = load_verified(checkpoint)["state_dict"]
    trained = {key: tensor for key, tensor in state.items() if ".lora_" in key}
    if trained.keys() != tensors.keys() or not all(torch.equal(trained[k], tensors[k]) for k in trained):
        raise CheckpointError(f"its tensors are not the adapter of the run's {name}; export it again (adapter "
                              "export RUN_DIR)")  # fmt: skip
    newer = "" if name == latest.path.name else f"; the run is at {latest.path.name} now: export again for it"
    return f"{name}{newer}"
