"""Under a grad scaler (``16-mixed``), only a step the scaler skipped for non-finite scaled gradients is a
``scaler_overflow`` rollback, which counts towards no restore or stop. A non-finite loss, or a step the scaler let
through that left the model non-finite, is divergence: every rollback under a scaler was called an overflow, so a
run whose every step diverged "completed", exit 0, with no step trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lit_psion.cli import main
from lit_psion.core.chain import log_lines
from lit_psion.models import DecoderLM
from tests.helpers import TINY


class NaNFromStep2LM(DecoderLM):
    """A decoder whose loss is NaN from its third step on (a model gone wrong, not a scaler's overflow)."""

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = super()._loss(batch)
        return (loss * float("nan") if self.trainer.global_step >= 2 else loss), logits


def _scaled(init_scale: float) -> str:
    scaler = {"class_path": "torch.amp.GradScaler", "init_args": {"device": "cpu", "init_scale": init_scale}}
    return json.dumps({"class_path": "lightning.pytorch.plugins.precision.MixedPrecision",
                       "init_args": {"precision": "16-mixed", "device": "cpu", "scaler": scaler}})  # fmt: skip


def _actions(root: Path) -> list[tuple[str | None, list[str]]]:
    (log,) = root.glob("*/receipts.jsonl")
    bodies = [json.loads(line)["body"] for line in log_lines(log.read_text())]
    return [(body["action"], body["reasons"]) for body in bodies if "action" in body and "reasons" in body]


# case -> (flags, exit code, what the transaction receipts say)
CASES = {
    # 2**24 overflows fp16's scaled gradients for six steps (the scale halving each time), then trains
    "genuine_overflow": (["--trainer.plugins", _scaled(2.0**24)], 0,
                         lambda acts: acts[:6] == [("scaler_overflow", ["nonfinite_grad"])] * 6
                         and {a for a, _ in acts[6:]} == {None} and len(acts) == 12),
    "lr_1e30": (["--trainer.plugins", _scaled(65536.0), "--model.init_args.optimizer.lr", "1e30"], 7,
                lambda acts: "scaler_overflow" not in {a for a, _ in acts} and acts[-1][0] == "stopped"),
    "nan_loss": (["--trainer.plugins", _scaled(65536.0), "--model.class_path",
                  f"{__name__}.NaNFromStep2LM"], 7,
                 lambda acts: acts[-1][0] == "stopped" and "nonfinite_loss" in acts[-1][1]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_only_the_scalers_own_overflow_is_forgiven(tmp_path: Path, case: str) -> None:
    flags, code, said = CASES[case]
    assert main(["fit", "--config", TINY, "--trainer.strategy", "transactional", "--trainer.max_steps", "12",
                 "--trainer.strategy.policy.restore_after", "2", "--trainer.strategy.policy.stop_after", "3",
                 "--trainer.default_root_dir", str(tmp_path), *flags]) == code  # fmt: skip
    actions = _actions(tmp_path)
    assert said(actions), actions
