"""Plots and pages built from run directories: the live dashboard and ``compare`` share them.

Everything here reads what a run already wrote (``metrics.csv``, ``run.json``, ``config.yaml``,
``checkpoints/pointer.json``) and writes static files: PNGs drawn with matplotlib and an HTML
page that opens from the file system with no server.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from lit_psion.core import RunLayout, RunRecord, atomic_write_bytes, atomic_write_text
from lit_psion.core.audit import changed_records, check_chain
from lit_psion.core.chain import log_lines
from lit_psion.core.errors import CheckpointError, ConfigError, EvidenceError
from lit_psion.core.layout import not_a_run
from lit_psion.core.lock import LOCK_FILE, RunLock, lock_holder
from lit_psion.core.metrics_csv import Series, one_line, read_metrics
from lit_psion.core.pointer import read_pointer
from lit_psion.core.vouched import unvouched_metric

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PANELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "loss": ("loss", ("train/loss", "train/mse", "val/loss")),  # train/mse: the graph core's training loss
    "lr": ("learning rate", ("train/lr",)),
    "norms": ("norms", ("telemetry/grad_norm", "telemetry/update_norm", "telemetry/param_norm")),
    "throughput": ("tokens/s (samples/s)", ("telemetry/tokens_per_s", "telemetry/samples_per_s")),
    "transactions": ("transactions: commit rate", ("transactions/commit_rate",)),
}
"""PNG name -> (title, metric keys drawn in it)."""
SEPARATE_SCALES = frozenset({"norms"})
"""Panels that give each metric its own axes: the parameter norm (~70) would flatten gradient and update norms (~1)."""
TIMELINE = "timeline.png"
"""The PNG of a run's events (checkpoints, rollbacks, restores, membership changes, growth, promotions) by step."""

def last_values(series: Series) -> dict[str, float]:
    return {key: points[-1][1] for key, points in series.items() if points}


def plot_panel(runs: dict[str, Series], panel: str, path: Path) -> bool:
    """Draw ``panel`` for every run (one colour per run, one line style per metric; a single run's metrics each in a
    colour of their own); False if nothing to draw.

    A panel in :data:`SEPARATE_SCALES` stacks one axes per metric (shared step axis), each on its own scale.
    """
    title, keys = PANELS[panel]
    present = [key for key in keys if any(_finite(series.get(key, [])) for series in runs.values())]
    if not present:
        return False
    rows = axes_rows(panel, present)
    figure = _figure(3.6 if len(rows) == 1 else 1.9 * len(rows) + 0.6)
    grid = figure.subplots(len(rows), 1, sharex=True, squeeze=False)
    styles = ("-", "--", ":")
    for axes, row in zip(grid[:, 0], rows, strict=True):
        for colour, (label, series) in enumerate(runs.items()):
            for key in row:
                points = _finite(series.get(key, []))
                if not points:
                    continue
                steps, values = zip(*points, strict=True)
                name = key if len(runs) == 1 else f"{label} {key}"
                style = styles[keys.index(key) % len(styles)]
                hue = keys.index(key) if len(runs) == 1 else colour  # one run: a colour per metric, else per run
                axes.plot(steps, values, style, color=f"C{hue}", label=name, marker="o" if len(points) < 3 else None)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    grid[0, 0].set_title(title)
    grid[-1, 0].set_xlabel("step")
    _save(figure, path)
    return True


def axes_rows(panel: str, keys: list[str]) -> list[list[str]]:
    """The metric keys each axes of ``panel`` draws, top to bottom: one axes per key for a panel in
    :data:`SEPARATE_SCALES`, else one axes for all."""
    return [[key] for key in keys] if panel in SEPARATE_SCALES else [list(keys)]


DRAWABLE = 1e300
"""The largest magnitude a plot draws: an axis from -1e308 to 1e308 spans more than a float holds, and matplotlib
cannot lay it out (a metrics.csv holding such values made `compare` and the dashboard fail)."""


def _finite(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    return [(step, value) for step, value in points if math.isfinite(value) and abs(value) <= DRAWABLE]


def _figure(height: float) -> Figure:
    from matplotlib.figure import Figure  # PNG bytes with Agg (no pyplot, window or global state), imported to draw

    return Figure(figsize=(6.4, height), dpi=100)


def _save(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


TIMELINE_ROWS = ("checkpoint", "rollback", "restore", "membership", "growth", "promotion", "hold")
"""The timeline's rows, top to bottom."""


def timeline_events(run_dir: str | Path) -> list[tuple[int, str, str]]:
    """(step, row, label) for every event a run's receipts record, in chain order.

    Rows are :data:`TIMELINE_ROWS`: durable checkpoints; rolled-back transactions, and rollbacks that
    restored a checkpoint; membership changes; growth actions; promotions and holds. A receipt with no
    step of its own (membership, promotion) is placed at the step the chain had reached. This reads the
    file as it is (a torn last line is skipped); ``receipts verify`` is what checks it.
    """
    path = RunLayout.of(run_dir).receipts
    events: list[tuple[int, str, str]] = []
    step = 0
    try:
        lines = log_lines(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return events
    for line in lines:
        try:
            receipt = json.loads(line)
            kind, body = receipt["kind"], receipt["body"]
            step = int(body.get("step_out", body.get("step", step)))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        if kind == "checkpoint" and body.get("durability") == "durable":
            events.append((step, "checkpoint", str(body.get("checkpoint"))))
        elif kind == "transaction" and body.get("decision") == "rollback":
            action = str(body.get("action") or "")
            row = "restore" if action.startswith("restored:") else "rollback"
            events.append((step, row, ",".join(map(str, body.get("reasons") or ())) or action))
        elif kind == "membership":
            events.append((step, "membership", f"{body.get('change')} -> world {body.get('world_size')}"))
        elif kind == "growth":
            events.append((step, "growth", str(body.get("action"))))
        elif kind == "policy_promotion":
            events.append((step, "promotion" if body.get("decision") == "promote" else "hold", ""))
    return events


def plot_timeline(events: list[tuple[int, str, str]], path: Path) -> bool:
    """Draw ``events`` as one row of markers per kind against step; False (nothing written) if there are none."""
    if not events:
        return False
    rows = [row for row in TIMELINE_ROWS if any(event_row == row for _, event_row, _ in events)]
    figure = _figure(0.5 * len(rows) + 1.4)
    axes = figure.subplots()
    for index, row in enumerate(rows):
        steps = [step for step, event_row, _ in events if event_row == row]
        axes.scatter(steps, [len(rows) - 1 - index] * len(steps), marker="|", s=300, color=f"C{index}")
    axes.set_yticks(range(len(rows)), [f"{row} ({sum(r == row for _, r, _ in events)})" for row in reversed(rows)])
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.set_xlabel("step")
    axes.set_title("timeline (from receipts.jsonl)")
    axes.grid(axis="x", alpha=0.3)
    _save(figure, path)
    return True


def write_plots(runs: dict[str, Series], directory: Path) -> list[str]:
    """Write every panel that has data into ``directory``; return the PNG names written."""
    directory.mkdir(parents=True, exist_ok=True)
    return [f"{panel}.png" for panel in PANELS if plot_panel(runs, panel, directory / f"{panel}.png")]


def evidence(run_dir: Path) -> dict[str, Any]:
    """What a run's files say about it: status, step, digests, the pointed-to checkpoint."""
    layout = RunLayout.of(run_dir)
    record = RunRecord.load(layout)
    try:
        pointer = read_pointer(layout)
    except CheckpointError:
        pointer = None
    return {
        "run_id": record.run_id,
        "status": str(record.status),
        "failure_class": record.failure_class,
        "global_step": record.global_step,
        "receipts_head": record.receipts_head,
        "config_digest": record.config_digest,
        "data_manifest_digest": record.data_manifest_digest,
        "model_signature": record.model_signature,
        "checkpoint": pointer.checkpoint if pointer is not None else None,
        "checkpoint_manifest_sha256": pointer.manifest_sha256 if pointer is not None else None,
    }


def chain_verdict(run_dir: Path) -> str:
    """``verified`` when the run's receipt chain and its anchors check out, ``none`` for a run that kept no
    receipts, ``unchecked`` while a fit writes it (a checkpoint may record a head past the bytes read), else
    ``FAILS: `` and the first problem (what ``receipts verify`` reports). Reads the whole log: for ``compare``, not
    for what a fit draws or logs as it trains."""
    layout = RunLayout.of(run_dir)
    record = RunRecord.load(layout)
    if record.receipts_head is None and not layout.receipts.exists() and not layout.receipts.is_symlink():
        return "none"
    if lock_holder(layout.run_dir) is not None:
        return "unchecked: a fit is writing the run"
    try:
        check_chain(layout, record)
    except EvidenceError as error:
        return f"FAILS: {error}"
    return "verified"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-family: monospace; }}
img {{ max-width: 48%; margin: 0.5em 1% 0.5em 0; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""


def write_page(path: Path, title: str, sections: Sequence[tuple[str, str]], images: Sequence[str]) -> None:
    """An HTML page of (heading, table html) sections and images relative to the page."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    body += "<h2>plots</h2>" + "".join(f'<img src="{html.escape(name)}" alt="{html.escape(name)}">' for name in images)
    atomic_write_text(path, PAGE.format(title=html.escape(title), body=body))


def write_dashboard(run_dir: str | Path) -> Path:
    """``run_dir/dashboard/index.html`` and its PNGs, from the run's files as they are now."""
    run_dir = Path(run_dir)
    directory = RunLayout.of(run_dir).dashboard
    if directory.is_symlink():  # what a run writes stays inside it (SPEC §6): replaced, never written through,
        directory.unlink()  # as a linked metrics.csv or config.yaml is
    series = read_metrics(run_dir)
    images = write_plots({run_dir.name: series}, directory)
    if plot_timeline(timeline_events(run_dir), directory / TIMELINE):
        images.append(TIMELINE)
    facts = evidence(run_dir)
    latest = sorted(last_values(series).items())
    write_page(
        directory / "index.html",
        f"lit_psion run {facts['run_id']}",
        [
            ("run", _table(["field", "value"], list(facts.items()))),
            ("latest metrics", _table(["metric", "value"], latest)),
        ],
        images,
    )
    return directory / "index.html"


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): node}


def read_config(run_dir: Path) -> dict[str, Any]:
    """``run_dir/config.yaml`` as dotted keys (empty if there is none).

    Raises:
        EvidenceError: the file is not a YAML mapping (broken YAML, not UTF-8, nested too deeply).
    """
    path = RunLayout.of(run_dir).config
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
        # PyYAML's pure-Python loader first: it refuses deep nesting with a RecursionError, where the C loader
        # OmegaConf uses overflows the C stack and kills the process.
        shape = yaml.safe_load(text)
        config = OmegaConf.to_container(OmegaConf.create(text)) if isinstance(shape, dict) else shape
    except RecursionError as error:
        raise EvidenceError(f"{str(path)!r} is nested too deeply to be the run's config YAML; restore it, or leave "
                            "this run out") from error  # fmt: skip
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as error:
        raise EvidenceError(f"{str(path)!r} is not the run's config YAML ({one_line(error)}); restore it, or "
                            "leave this run out") from error  # fmt: skip
    if not isinstance(config, dict):
        what = "nothing" if config is None else f"a YAML {type(config).__name__}"
        raise EvidenceError(f"{str(path)!r} holds {what}, not the run's config mapping; restore it, or leave this "
                            "run out")  # fmt: skip
    return _flatten(config)


class _Absent:
    """A key a run's config does not have, told apart from one it sets to null."""

    def __repr__(self) -> str:
        return "(not in this config)"


ABSENT = _Absent()


class _NoConfig:
    """Every key of a run whose config.yaml is missing: not a config without the key."""

    def __repr__(self) -> str:
        return "(no config.yaml)"


NO_CONFIG = _NoConfig()


def config_diff(run_dirs: Sequence[Path]) -> list[tuple[str, list[Any]]]:
    """Dotted config keys whose values differ between runs, with each run's value (:data:`ABSENT` where it has none;
    None where it sets null)."""
    flats = [read_config(run_dir) if RunLayout.of(run_dir).config.is_file() else None for run_dir in run_dirs]
    keys = sorted(set().union(*(flat for flat in flats if flat is not None)))
    rows = [(key, [NO_CONFIG if flat is None else flat.get(key, ABSENT) for flat in flats]) for key in keys]
    return [(key, values) for key, values in rows if len({repr(v) for v in values}) > 1]


def compare(run_dirs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Compare runs: config diff, final metrics and evidence, overlay plots in ``out`` (PNG + index.html).

    Raises:
        ConfigError: a path that is not a run directory, or fewer than one run.
        EvidenceError: a run's run.json, metrics.csv or config.yaml cannot be read (``out`` is then left untouched).
    """
    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise ConfigError("compare needs at least one RUN_DIR (a directory holding run.json)")
    for run in runs:
        if not RunLayout.of(run).is_run():
            raise ConfigError(not_a_run(run))
    labels = _labels(runs)
    series = {label: read_metrics(run) for label, run in zip(labels, runs, strict=True)}
    finals = {label: last_values(s) for label, s in series.items()}
    steps = {label: {key: points[-1][0] for key, points in s.items() if points} for label, s in series.items()}
    metric_keys = sorted({k for f in finals.values() for k in f if k.startswith(("val/", "train/loss", "train/mse"))})
    diff = config_diff(runs)
    facts = [{**evidence(run), "receipts": chain_verdict(run)} for run in runs]  # all read before anything is written
    for fact, label, run in zip(facts, labels, runs, strict=True):  # the values shown beside it, held to it
        fact["chain_fails"] = fact["receipts"].startswith("FAILS")
        if fact["receipts"] == "verified" and (changed := changed_records(RunLayout.of(run))):  # the config shown
            fact["receipts"] = f"verified; records FAIL: {changed[0].artifact}: {changed[0].detail}"
        if fact["receipts"] == "verified" and (edit := unvouched_metric(RunLayout.of(run), series[label])):
            fact["receipts"] = f"verified; records FAIL: metrics.csv: {edit}"
    out = Path(out)
    _earlier_comparison(out)  # refused before anything is made
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # (root ignores permission bits; an immutable directory it cannot)
            pass
    except OSError as error:
        raise ConfigError(f"--out {str(out)!r} cannot be {'written' if out.is_dir() else 'created'} "
                          f"({error.strerror or error}); give a directory you can write") from error  # fmt: skip
    fields = ("status", "global_step", "receipts", "receipts_head", "checkpoint", "checkpoint_manifest_sha256")
    final_rows = [(key, *(at_step(finals[label].get(key), steps[label].get(key)) for label in labels))
                  for key in metric_keys]  # fmt: skip
    with RunLock(out, purpose=f"compare into {out}"):  # two at once mixed their plots under one page
        earlier = _earlier_comparison(out)
        staging = out / STAGING  # drawn apart, then moved in, the page last: a Ctrl-C leaves no page over mixed plots
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        images = write_plots(series, staging)
        write_page(
            staging / "index.html",
            f"lit_psion compare: {', '.join(labels)}",
            [
                ("config differences", _table(["key", *labels], [(k, *v) for k, v in diff])),
                ("final metrics", _table(["metric", *labels], final_rows)),
                ("evidence", _table(["field", *labels], [(f, *(e[f] for e in facts)) for f in fields])),
            ],
            images,
        )
        (out / "index.html").unlink(missing_ok=True)
        for name in images:
            os.replace(staging / name, out / name)
        for stale in earlier - {"index.html", *images}:  # an earlier comparison's panel this one does not draw
            (out / stale).unlink(missing_ok=True)
        os.replace(staging / "index.html", out / "index.html")
        staging.rmdir()
    return {"labels": labels, "config_diff": diff, "final": finals, "final_steps": steps, "metrics": metric_keys,
            "evidence": facts, "page": out / "index.html", "images": images}  # fmt: skip


def at_step(value: float | None, step: int | None) -> str:
    """A final metric with the step it was logged at: runs of different lengths, or a val/loss from an earlier step
    than the last train/loss, are not compared as if taken at one point."""
    return "" if value is None else f"{value:.5g} (step {step})"  # .5g: a graph core's 6.5e-06 is not 0.0000


STAGING = ".compare-staging"
"""Where ``compare`` draws a comparison before moving it into ``--out``."""


def _earlier_comparison(out: Path) -> set[str]:
    """The files an earlier ``compare`` wrote in ``out`` (empty for a new or empty directory), which this one
    replaces.

    Raises:
        ConfigError: ``out`` is a file, or a directory holding anything else (a user's files, a run), which compare
            would mix its plots into or overwrite.
    """
    if not out.is_dir():
        if out.exists() or out.is_symlink():
            raise ConfigError(f"--out {str(out)!r} is a file, not a directory; give a new or empty directory")
        return set()
    names = {entry.name for entry in out.iterdir()} - {LOCK_FILE}
    ours = {"index.html", *(f"{panel}.png" for panel in PANELS)}
    index = out / "index.html"
    cut_short = STAGING in names and (out / STAGING).is_dir()  # a compare stopped part way: its files are ours
    if not names or (names - {STAGING} <= ours and (cut_short or (index.is_file() and _is_comparison_page(index)))):
        return names - {STAGING}
    other = sorted(names - ours) or sorted(names)
    raise ConfigError(f"--out {str(out)!r} already holds files compare did not write (such as {other[0]!r}); give a "
                      "new or empty directory, or an earlier comparison's")  # fmt: skip


def _is_comparison_page(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(256)
    except OSError:
        return False
    return b"<title>lit_psion compare: " in head


def _labels(runs: Sequence[Path]) -> list[str]:
    names = [run.name for run in runs]
    return names if len(set(names)) == len(names) else [str(run) for run in runs]


class PipedConsole(Console):
    """Rich's ``Console``, except when the reader of its output has left (``| head``, ``| true``): the rest of the
    output is dropped and the command ends with its own exit code. Rich's own exits 1, lit_psion's code for its
    own bugs, even in a fit's summary after the run completed."""

    def on_broken_pipe(self) -> None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
