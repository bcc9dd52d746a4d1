"""Which metrics.csv values the receipts vouch for: the rows of the current attempt, a signed model's train/loss, a
validation score under a name eval receipts record. Each case here was a genuine run doctor called edited."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.core.layout import RunLayout
from lit_psion.core.receipt_log import ReceiptLog
from lit_psion.core.receipts import EvalReceipt, TrainerStepReceipt, TrainingRunReceipt
from lit_psion.core.vouched import unvouched_metric


def _run(tmp_path: Path, *bodies: object) -> RunLayout:
    layout = RunLayout(tmp_path, "r1")
    layout.run_dir.mkdir(parents=True)
    log = ReceiptLog(layout.receipts, run_id="r1")
    for body in bodies:
        log.append(body)
    log.close()
    return layout


def _started(signature: str | None = "s" * 64, event: str = "started", lineage: tuple[str, ...] = ()) -> object:
    return TrainingRunReceipt(stage_id="pretrain", event=event, status="active", config_digest=None,
                              data_manifest_digest=None, model_signature=signature, checkpoint_lineage=lineage)


def _step(step: int, loss: float) -> object:
    return TrainerStepReceipt(stage_id="pretrain", step_in=step - 1, step_out=step, batch_digest="", cursor=None,
                              loss=loss, lr=0.1, optimizer="AdamW")  # fmt: skip


def _eval(step: int, loss: float) -> object:
    return EvalReceipt(stage_id="pretrain", step=step, split="val", data_manifest_digest=None, policy_revision=None,
                       scores={"val/loss": loss})  # fmt: skip


def test_an_edited_row_of_a_signed_model_is_named(tmp_path: Path) -> None:
    layout = _run(tmp_path, _started(), _step(1, 3.0), _step(2, 2.0), _eval(2, 2.5))
    assert unvouched_metric(layout, {"train/loss": [(1, 3.0), (2, 2.0)], "val/loss": [(2, 2.5)]}) is None
    assert "train/loss at step 1 is 0.5, but its receipt records 3" in unvouched_metric(
        layout, {"train/loss": [(1, 0.5), (2, 2.0)]})  # fmt: skip


ACCEPTED = [  # (what the receipts record, what metrics.csv holds): each was "the file was edited"
    ("a model of one's own logs its own train/loss (rank 0's under DDP, a micro-batch's under accumulation)",
     (_started(signature=None), _step(1, 3.0)), {"train/loss": [(1, 6.0)]}),
    ("a validation hook's per-step name, which no eval receipt records",
     (_started(), _step(1, 3.0), _eval(1, 2.5)), {"val/acc_step": [(1, 0.5)]}),
    ("a restart in place: the earlier attempt's receipts, rows of which metrics.csv dropped",
     (_started(), _step(1, 9.0), _started(), _step(2, 2.0)), {"train/loss": [(1, 3.0), (2, 2.0)]}),
    ("a resume: the steps past its checkpoint, trained again (and decided otherwise, or not receipted)",
     (_started(), _step(1, 3.0), _step(2, 9.0), _started(event="resumed", lineage=("checkpoints/step-000001",))),
     {"train/loss": [(1, 3.0), (2, 2.0)]}),
    ("a resume killed just after its receipt: the earlier attempt's score past its checkpoint, not yet dropped",
     (_started(), _step(1, 3.0), _step(2, 2.8), _eval(2, 2.5),
      _started(event="resumed", lineage=("checkpoints/step-000001",))), {"val/loss": [(2, 2.5)]}),
]


def test_a_score_past_a_resumed_checkpoint_is_held_to_the_earlier_attempts_receipt(tmp_path: Path) -> None:
    layout = _run(tmp_path, _started(), _step(1, 3.0), _step(2, 2.8), _eval(2, 2.5),
                  _started(event="resumed", lineage=("checkpoints/step-000001",)))  # fmt: skip
    said = unvouched_metric(layout, {"val/loss": [(2, 2.4)]})
    assert said is not None and "val/loss at step 2 is 2.4, but no eval receipt records" in said
    # once the resumed attempt trains, it has dropped the earlier attempt's rows: one put back is not vouched for
    trained_on = _run(tmp_path / "on", _started(), _step(1, 3.0), _step(2, 2.8), _eval(2, 2.5),
                      _started(event="resumed", lineage=("checkpoints/step-000001",)), _step(2, 2.7))  # fmt: skip
    said = unvouched_metric(trained_on, {"val/loss": [(2, 2.5)]})
    assert said is not None and "val/loss at step 2 is 2.5, but no eval receipt records" in said


@pytest.mark.parametrize(("case", "bodies", "rows"), ACCEPTED, ids=[c[0].split(":")[0][:40] for c in ACCEPTED])
def test_a_genuine_run_is_not_called_edited(tmp_path: Path, case: str, bodies: tuple, rows: dict) -> None:
    assert unvouched_metric(_run(tmp_path, *bodies), rows) is None
