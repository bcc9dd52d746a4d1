"""Whether the numbers a run's metrics.csv shows are the ones its receipts record.

metrics.csv carries no digest (it is appended every few steps, and read as it grows); the receipts record each
validation's scores (``eval``) and each step's loss (``trainer_step``). ``compare`` shows a run's final values beside
its receipt verdict, so it holds those values to the receipts first: an edited cell is not shown as vouched for.
"""

from __future__ import annotations

import math
from typing import Any

from lit_psion.core.chain import parse_receipt
from lit_psion.core.layout import RunLayout


def unvouched_metric(layout: RunLayout, finals: dict[str, float], steps: dict[str, int]) -> str | None:
    """The first of ``finals`` (metric -> value, at ``steps``' step) that a receipt of the same step records
    otherwise, said in words; None when every one a receipt records agrees (to float32's precision)."""
    recorded: dict[tuple[int, str], float] = {}
    with open(layout.receipts, encoding="utf-8") as handle:  # (verified by the caller: every line parses)
        for line in handle:
            if not line.strip():
                continue
            receipt = parse_receipt(line)
            body: dict[str, Any] = receipt.body
            if receipt.kind == "eval" and isinstance(body.get("scores"), dict):
                recorded |= {(body["step"], name): value for name, value in body["scores"].items()}
            elif receipt.kind == "trainer_step":
                recorded[(body["step_out"], "train/loss")] = body["loss"]
    for name in sorted(finals):
        said = recorded.get((steps.get(name), name))
        value = finals[name]
        if said is None and name.startswith("val/") and math.isfinite(value):  # every validation of a fit has one
            return (f"metrics.csv's {name} at step {steps.get(name)} is {value:.6g}, but no eval receipt records "
                    f"{name} at that step: the file was edited; the receipts' scores are the run's")  # fmt: skip
        if isinstance(said, int | float) and not math.isclose(value, said, rel_tol=1e-6, abs_tol=1e-12):
            return (f"metrics.csv's {name} at step {steps[name]} is {value:.6g}, but its receipt records "
                    f"{said:.6g}: the file was edited; the receipts' value is the run's")  # fmt: skip
    return None
