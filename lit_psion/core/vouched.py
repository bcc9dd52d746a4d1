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
    attempt's, a resume those past its checkpoint). ``train/loss`` is held to the step receipts only for a model that
    signs its settings (lit_psion's, which write the row with the receipt's loss at every world size and under
    gradient accumulation); a model of one's own logs what it chooses under that name.
    """
    recorded: dict[tuple[int, str], float] = {}
    scored: set[str] = set()
    signed = False
    with open(layout.receipts, encoding="utf-8") as handle:  # (verified by the caller: every line parses)
        for line in handle:
            if not line.strip():
                continue
            receipt = parse_receipt(line)
            body: dict[str, Any] = receipt.body
            if receipt.kind == "training_run" and body.get("event") == "started":
                recorded.clear()  # an attempt started afresh: the earlier one's rows are gone from metrics.csv
            elif receipt.kind == "training_run" and (step := resumed_step(body)) is not None:
                recorded = {key: value for key, value in recorded.items() if key[0] <= step}  # replayed from here
            if receipt.kind == "training_run":
                signed = body.get("model_signature") is not None
            elif receipt.kind == "eval" and isinstance(body.get("scores"), dict):
                recorded |= {(body["step"], name): value for name, value in body["scores"].items()}
                scored |= set(body["scores"])
            elif receipt.kind == "trainer_step":
                recorded[(body["step_out"], "train/loss")] = body["loss"]
    for name in sorted(series):
        if name == "train/loss" and not signed:
            continue
        for step, value in series[name]:
            said = recorded.get((step, name))
            if said is None and name in scored and math.isfinite(value):  # every validation of a fit has one
                return (f"metrics.csv's {name} at step {step} is {value:.6g}, but no eval receipt records {name} at "
                        "that step: the file was edited; the receipts' scores are the run's")  # fmt: skip
            if isinstance(said, int | float) and not math.isclose(value, said, rel_tol=1e-6, abs_tol=1e-12):
                return (f"metrics.csv's {name} at step {step} is {value:.6g}, but its receipt records {said:.6g}: "
                        "the file was edited; the receipts' value is the run's")  # fmt: skip
    return None
