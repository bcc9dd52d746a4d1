"""Whether the numbers a run's metrics.csv shows are the ones its receipts record.

metrics.csv carries no digest (it is appended every few steps, and read as it grows); the receipts record each
validation's scores (``eval``) and each step's loss (``trainer_step``). ``compare`` shows a run's values beside its
receipt verdict, so it holds every row to the receipts first (an edited cell is not shown as vouched for), and
``doctor`` does the same.
"""

from __future__ import annotations

import math
from typing import Any

from lit_psion.core.chain import parse_receipt
from lit_psion.core.layout import RunLayout
from lit_psion.core.skip_list import resumed_step


def unvouched_metric(layout: RunLayout, series: dict[str, list[tuple[int, float]]]) -> str | None:
    """The first value of ``series`` (metric -> its (step, value) rows, as metrics.csv holds them) that a receipt
    of the same step records otherwise, said in words; None when every one a receipt records agrees (to float32's
    precision). A validation score no ``eval`` receipt records at its step, under a name eval receipts do record,
    was never a validation's.

    Only the current attempt's receipts count (metrics.csv keeps its rows: a restart in place drops the earlier
    attempt's, a resume those past its checkpoint; a kill just after its first receipt leaves them, so a score no
    receipt of this attempt records may be the earlier attempt's, as its receipt records it). ``train/loss`` is held
    to the step receipts only for a model that signs its settings (lit_psion's, which write the row with the
    receipt's loss at every world size and under gradient accumulation); a model of one's own logs what it chooses
    under that name.
    """
    recorded: dict[tuple[int, str], float] = {}
    abandoned: dict[tuple[int, str], float] = {}  # an earlier attempt's, past where the last one started
    scored: set[str] = set()
    signed, sealed_at, evaluated, latest, progressed = False, None, set(), {}, False
    with open(layout.receipts, encoding="utf-8") as handle:  # (verified by the caller: every line parses)
        for line in handle:
            if not line.strip():
                continue
            receipt = parse_receipt(line)
            body: dict[str, Any] = receipt.body
            sealed_at = body.get("step") if receipt.kind == "chain_seal" else (
                sealed_at if receipt.kind == "chain_repair" else None)  # fmt: skip
            if receipt.kind == "training_run" and body.get("event") == "started":
                # an attempt started afresh: the earlier one's rows are gone from metrics.csv (the previous attempt's
                # only: one that trained had dropped those before it)
                abandoned = (abandoned if not progressed else {}) | recorded
                recorded.clear()  # (once it trains: a kill before then leaves them, genuine: see below)
                evaluated.clear()
            elif receipt.kind == "training_run" and (step := resumed_step(body)) is not None:
                abandoned = (abandoned if not progressed else {}) | {k: v for k, v in recorded.items() if k[0] > step}
                recorded = {key: value for key, value in recorded.items() if key[0] <= step}  # replayed from here
                evaluated = {key for key in evaluated if key[0] <= step}
            if receipt.kind in ("trainer_step", "eval") or (receipt.kind == "training_run" and body.get("event") in (
                    "started", "resumed")):  # fmt: skip
                progressed = receipt.kind != "training_run"  # whether the last attempt trained or validated yet
            if receipt.kind == "training_run":
                signed = body.get("model_signature") is not None
            elif receipt.kind == "eval" and isinstance(body.get("scores"), dict):
                recorded |= {(body["step"], name): value for name, value in body["scores"].items()}
                evaluated |= {(body["step"], name) for name, value in body["scores"].items()
                              if latest.get(name) != value}  # (a run before 2026-12-07 repeated a score not logged)
                latest |= body["scores"]
                scored |= set(body["scores"])
            elif receipt.kind == "trainer_step":
                recorded[(body["step_out"], "train/loss")] = body["loss"]
    vouched = scored | ({"train/loss"} if signed else set())
    if progressed or sealed_at is not None:  # the last attempt trained on: it dropped the earlier one's rows
        abandoned.clear()
    if isinstance(sealed_at, int) and (said := _not_of_the_sealed_run(
            {name: rows for name, rows in series.items() if name in vouched}, sealed_at, evaluated, recorded)):
        return said
    for name in sorted(series):
        if name == "train/loss" and not signed:
            continue
        for step, value in series[name]:
            said = recorded.get((step, name))
            if name in scored and (said is None or not _close(value, said)) and (step - 1, name) in recorded:
                said = recorded[(step - 1, name)]  # one amid an accumulation window: Lightning files it a step on
            if said is None and name in scored and _close(value, abandoned.get((step, name), math.nan)):
                continue  # an earlier attempt's, which this one drops from metrics.csv just after its first receipt
            if said is None and name in scored and math.isfinite(value):  # every validation of a fit has one
                return (f"metrics.csv's {name} at step {step} is {value:.6g}, but no eval receipt records {name} at "
                        "that step: the file was edited; the receipts' scores are the run's")  # fmt: skip
            if isinstance(said, int | float) and not _close(value, said):
                return (f"metrics.csv's {name} at step {step} is {value:.6g}, but its receipt records {said:.6g}: "
                        "the file was edited; the receipts' value is the run's")  # fmt: skip
    return None


def _not_of_the_sealed_run(series: dict[str, list[tuple[int, float]]], sealed_at: int, evaluated: set[tuple[int, str]],
                           recorded: dict[tuple[int, str], float]) -> str | None:  # fmt: skip
    """For a completed run (its chain sealed at ``sealed_at``), whose rows are all written: a row of a score the
    receipts vouch for (``series`` holds only those; a callback's own row at ``global_step`` is not one) at a step
    the run never reached, or a validation score its eval receipt records but the file lost (a worse last
    validation hidden by deleting its row) of a name the file has rows of (one logged with ``logger=False`` has
    none)."""
    for name, rows in sorted(series.items()):
        if (beyond := next((step for step, _ in rows if not 1 <= step <= sealed_at), None)) is not None:
            return (f"metrics.csv has a {name} row at step {beyond}, but the run completed at step {sealed_at} (its "
                    "sealed receipts): the file was edited")  # fmt: skip
    for step, name in sorted(evaluated):
        value = recorded[(step, name)]
        if name in series and isinstance(value, int | float) and math.isfinite(value) and not (
                {step, step + 1} & {at for at, _ in series[name]}):  # fmt: skip (step + 1: amid an accumulation)
            return (f"metrics.csv has no {name} row at step {step}, which its eval receipt records ({value:.6g}): "
                    "rows were deleted")  # fmt: skip
    return None


def _close(value: float, said: Any) -> bool:
    return isinstance(said, int | float) and math.isclose(value, said, rel_tol=1e-6, abs_tol=1e-12)
