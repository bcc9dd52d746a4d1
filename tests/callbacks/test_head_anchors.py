"""The receipt chain's head outside the log covers the newest checkpoint's receipt, and an attempt's records agree:
forgeries that re-hash the chain's tail over a swapped checkpoint or a forged config.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest

from lit_psion.cli import main
from lit_psion.core import read_json, sha256_file
from lit_psion.core.layout import RunLayout
from lit_psion.core.run import read_latest
from tests.callbacks.test_checkpoint_binding import _resume, _run


def test_a_config_forged_with_the_end_of_its_attempt_rehashed_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """config.yaml edited, run.json's digest set to it, and the attempt's ``completed`` receipt made to record it with
    the chain's tail (that receipt and the seal) re-hashed and run.json's head moved: every digest agreed, and a
    resume recorded the forged value as the run's earlier setting. The attempt's ``started`` receipt, which the
    checkpoints' heads anchor, still records the config it trained with."""
    from tests.callbacks.test_evidence_anchors import forge, lines, set_run_json, write_lines

    run = _run(tmp_path / "runs")
    run.config.write_text(run.config.read_text().replace("32", "64"))
    forged = sha256_file(run.config)
    kept = [json.loads(line) for line in lines(run)]
    at = next(i for i, r in enumerate(kept) if r["kind"] == "training_run" and r["body"]["event"] == "completed")
    prev, rewritten = kept[at]["prev_digest"], [json.dumps(r) for r in kept[:at]]
    for receipt in kept[at:]:
        body = {**receipt["body"], "config_digest": forged} if receipt is kept[at] else receipt["body"]
        rewritten.append(forge(run.run_id, receipt["seq"], prev, receipt["kind"], body))
        prev = json.loads(rewritten[-1])["digest"]
    write_lines(run, rewritten)
    set_run_json(run, receipts_head=prev, config_digest=forged)
    before = {p: p.read_bytes() for p in run.run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert main(["receipts", "verify", str(run.run_dir)]) == 0  # the chain itself is whole
    assert main(["doctor", str(run.run_dir)]) != 0
    out = capsys.readouterr().out
    assert "its attempt's first" in out and "no training_run receipt records it" in out
    assert _resume(run.root) in (3, 5)
    assert "its attempt's first" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before


HEADS: list[tuple[int, str | None, list[dict]]] = []


class RunJsonHeadAtEachStep(L.Callback):
    """run.json's receipts head and the log, read at the start of every step (the previous step's checkpoint, if it
    wrote one, is durable and receipted by then)."""

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        layout = RunLayout.of(Path(trainer.default_root_dir) / read_latest(Path(trainer.default_root_dir)))
        chain = [json.loads(line) for line in layout.receipts.read_text().splitlines()]
        HEADS.append((trainer.global_step, read_json(layout.run_file)["receipts_head"], chain))


def test_run_json_records_a_head_that_covers_the_newest_checkpoints_receipt(tmp_path: Path) -> None:
    """run.json's head was written before the checkpoint's durable receipt: nothing outside the log anchored the
    receipt that binds the checkpoint a resume loads (a killed run's newest checkpoint could be swapped, its
    manifest, pointer and receipts re-hashed, without touching run.json), nor the W&B pin, which mirrors it."""
    HEADS.clear()
    _run(tmp_path / "runs", "--trainer.callbacks+=tests.callbacks.test_head_anchors.RunJsonHeadAtEachStep")
    checked = 0
    for step, head, chain in HEADS:
        durable = [i for i, r in enumerate(chain) if r["kind"] == "checkpoint" and r["body"]["durability"] == "durable"]
        if step == 0 or not durable:
            continue
        at = next(i for i, r in enumerate(chain) if r["digest"] == head)
        assert at >= durable[-1], f"step {step}: run.json's head is receipt {at}, the newest checkpoint's is later"
        checked += 1
    assert checked >= 3  # steps 3..5 after the step-3 checkpoint
