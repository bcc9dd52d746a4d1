"""The promotion gate (seed 004): a fine-tuned candidate is promoted only if it beats its base held out.

At the end of fit, the base (adapters off) and the candidate (adapters on) are evaluated on the
validation split. The candidate is promoted when its held-out loss is lower than the base's by at
least ``min_delta``; otherwise it is held, with reason codes. Either way a ``policy_promotion``
receipt joins the run's chain and ``<run_dir>/promotion.json`` records the decision.
"""

from __future__ import annotations

import math

import lightning as L
from typing_extensions import override

from lit_psion.callbacks.evidence import EvidenceCallback
from lit_psion.core import atomic_write_json
from lit_psion.core.contracts import Promotable
from lit_psion.core.errors import ConfigError
from lit_psion.core.receipts import PolicyPromotionReceipt


class PromotionGate(EvidenceCallback):
    """Promote an AdapterLM only if held-out loss improves by at least ``min_delta``.

    Args:
        min_delta: The improvement (base loss - candidate loss) a promotion needs (default 0.001: a real gain).
        max_batches: Validation batches to score (``None``: the whole split).
    """

    def __init__(self, min_delta: float = 1e-3, max_batches: int | None = None) -> None:
        if not (isinstance(min_delta, int | float) and math.isfinite(min_delta) and min_delta >= 0):
            raise ConfigError(f"promotion min_delta must be a finite number >= 0, got {min_delta!r}")
        if max_batches is not None and not (isinstance(max_batches, int) and max_batches >= 1):  # 0 scored nothing:
            # a "hold" of losses 0.0 -> 0.0, recorded as measured
            raise ConfigError(f"promotion max_batches must be >= 1 (or null: the whole split), got {max_batches!r}")
        self.min_delta, self.max_batches = min_delta, max_batches
        self.decision: dict | None = None

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, Promotable):  # it did nothing, without a word
            raise ConfigError(f"PromotionGate gates an adapter fine-tune against its base; {type(pl_module).__name__} "
                              "has no base to compare with (remove the callback, or fine-tune with "
                              "lit_psion.models.AdapterLM)")  # fmt: skip

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.interrupted or not isinstance(pl_module, Promotable):
            return
        loader = trainer.datamodule.val_dataloader()
        batches = [batch for i, batch in enumerate(loader) if self.max_batches is None or i < self.max_batches]
        base = pl_module.held_out_loss(batches, adapters=False)
        candidate = pl_module.held_out_loss(batches, adapters=True)
        improvement = base - candidate
        reasons = []
        if not math.isfinite(candidate):
            reasons.append("candidate_not_finite")
        elif improvement < 0:
            reasons.append("held_out_regression")
        elif improvement < self.min_delta:
            reasons.append("below_min_delta")
        decision = "hold" if reasons else "promote"
        run = self.run(trainer)
        self.decision = {"decision": decision, "reasons": reasons, "base_loss": base, "candidate_loss": candidate,
                         "improvement": improvement, "min_delta": self.min_delta,
                         "previous_revision": f"base:{pl_module.base_digest}",
                         "candidate_revision": f"adapter:{pl_module.model_signature}"}  # fmt: skip
        if trainer.is_global_zero:
            atomic_write_json(run.layout.promotion, self.decision)
        scores = {"base_loss": base, **({"candidate_loss": candidate} if math.isfinite(candidate) else {})}
        self._emit_own(trainer, PolicyPromotionReceipt(
            stage_id=run.stage, previous_revision=self.decision["previous_revision"],
            candidate_revision=self.decision["candidate_revision"], split="val",
            scores=scores,
            decision=decision, reasons=tuple(reasons),
        ))  # fmt: skip
        if trainer.is_global_zero:
            print(f"promotion: {decision} (held-out loss base {base:.4f} -> candidate {candidate:.4f}"
                  f"{', ' + ', '.join(reasons) if reasons else ''})")  # fmt: skip
