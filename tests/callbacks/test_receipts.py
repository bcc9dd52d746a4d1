"""Receipts during fit: one chain per run, continued across resumes, open to user evidence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import read_json, sha256_json
from lit_psion.core.layout import RECEIPTS_FILE
from lit_psion.core.run import read_latest
from tests.helpers import TINY, callbacks_config, consumed, fit


def receipts(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / RECEIPTS_FILE).read_text().splitlines()]


def test_a_fit_leaves_a_verifiable_chain_of_typed_receipts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    extra = callbacks_config(tmp_path / "cb.json", ("RecordConsumed", {"path": str(tmp_path / "ids.jsonl")}))
    assert fit("--config", extra, "--trainer.default_root_dir", str(tmp_path)) == 0
    run_dir = tmp_path / read_latest(tmp_path)
    chain = receipts(run_dir)
    kinds = [r["kind"] for r in chain]
    assert kinds[0] == "training_run" and chain[0]["body"]["event"] == "started"
    assert kinds[-2] == "training_run" and chain[-2]["body"]["event"] == "completed"
    assert kinds[-1] == "chain_seal" and chain[-1]["body"] == {"stage_id": "pretrain", "step": 12, "receipts": 20}
    assert kinds.count("trainer_step") == 12 and kinds.count("eval") == 2 and kinds.count("checkpoint") == 4
    steps = [r["body"] for r in chain if r["kind"] == "trainer_step"]
    ids = consumed(tmp_path / "ids.jsonl")
    assert [s["batch_digest"] for s in steps] == [
        sha256_json({"sample_ids": batch, "cursor": list(s["cursor"])}) for batch, s in zip(ids, steps, strict=True)
    ]
    assert [s["step_out"] for s in steps] == list(range(1, 13))
    assert read_json(run_dir / "run.json")["receipts_head"] == chain[-1]["digest"]
    checkpoint = next(r["body"] for r in chain if r["kind"] == "checkpoint")
    assert checkpoint["checkpoint"] == "checkpoints/step-000003" and checkpoint["durability"] == "durable"
    capsys.readouterr()
    assert main(["receipts", "verify", str(run_dir)]) == 0
    assert "21 receipts verified" in capsys.readouterr().out


def test_resume_continues_the_same_chain(tmp_path: Path) -> None:
    root = ("--trainer.default_root_dir", str(tmp_path))
    assert fit(*root, "--trainer.max_steps", "6") == 0
    assert fit(*root, "--trainer.max_steps", "9", "--ckpt_path", "last") == 0
    run_dir = tmp_path / read_latest(tmp_path)
    events = [r["body"]["event"] for r in receipts(run_dir) if r["kind"] == "training_run"]
    assert events == ["started", "completed", "resumed", "completed"]
    resumed_step = next(r["body"] for r in receipts(run_dir) if r["kind"] == "trainer_step" and r["body"]["checkpoint"])
    assert resumed_step["step_out"] == 7 and resumed_step["checkpoint"] == "checkpoints/step-000006"
    assert main(["receipts", "verify", str(run_dir)]) == 0


def test_every_n_steps_thins_step_receipts(tmp_path: Path) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path), "--receipts.every_n_steps", "4") == 0
    chain = receipts(tmp_path / read_latest(tmp_path))
    assert [r["body"]["step_out"] for r in chain if r["kind"] == "trainer_step"] == [4, 8, 12]


def test_truncated_receipts_fail_verification(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert fit("--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3") == 0
    run_dir = tmp_path / read_latest(tmp_path)
    lines = (run_dir / RECEIPTS_FILE).read_text().splitlines()
    (run_dir / RECEIPTS_FILE).write_text("\n".join(lines[:-1]) + "\n")
    capsys.readouterr()
    assert main(["receipts", "verify", str(run_dir)]) == 5
    assert "truncated" in capsys.readouterr().err


def test_a_user_receipt_at_the_start_of_a_resumed_completed_run_keeps_the_chain_whole(tmp_path: Path) -> None:
    """It landed after the seal, before the resume's own receipt: the fit exited 0, `completed`, and neither
    `receipts verify` nor the next resume accepted the run again."""
    note = callbacks_config(tmp_path / "cb.json", ("NoteAt", {"hook": "on_train_start"}))
    root = ("--config", note, "--trainer.default_root_dir", str(tmp_path))
    assert fit(*root, "--trainer.max_steps", "3") == 0
    assert fit(*root, "--trainer.max_steps", "5", "--ckpt_path", "last") == 0
    run_dir = tmp_path / read_latest(tmp_path)
    assert main(["receipts", "verify", str(run_dir)]) == 0
    kinds = [r["kind"] for r in receipts(run_dir)]
    assert kinds.count("example_loss_spike") == 2 and kinds[kinds.index("chain_seal") + 2] == "example_loss_spike"
    assert fit(*root, "--trainer.max_steps", "6", "--ckpt_path", "last") == 0


def test_a_user_receipt_after_the_seal_is_refused_and_the_run_stays_whole(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """Emitted in teardown, it followed the seal: exit 0, `completed`, and a chain that no longer verified."""
    note = callbacks_config(tmp_path / "cb.json", ("NoteAt", {"hook": "teardown"}))
    assert fit("--config", note, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3") == 5
    assert "emitted after this fit sealed the run's chain" in capsys.readouterr().err
    run_dir = tmp_path / read_latest(tmp_path)
    assert read_json(run_dir / "run.json")["status"] == "completed"
    assert main(["receipts", "verify", str(run_dir)]) == 0


def test_a_user_receipt_no_chain_can_take_is_said_to_be_lost(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Emitted in a callback's setup (before the chain opens) or while validating (which keeps no receipts), it was
    dropped without a word."""
    note = callbacks_config(tmp_path / "cb.json", ("NoteAt", {"hook": "setup"}))
    capsys.readouterr()
    assert fit("--config", note, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3") == 0
    err = capsys.readouterr().err
    assert err.count("NoteAt emitted a 'example_loss_spike' receipt before the run's chain opened (it opens in setup: "
                     "emit from on_fit_start on); it was not written") == 1, err  # fmt: skip
    run_dir = tmp_path / read_latest(tmp_path)
    assert "example_loss_spike" not in [r["kind"] for r in receipts(run_dir)]
    assert main(["validate", "--config", TINY, "--config", note, "--trainer.default_root_dir", str(tmp_path),
                 "--ckpt_path", "last"]) == 0  # fmt: skip
    assert "receipt in validate, which keeps none; it was not written" in capsys.readouterr().err


def test_a_user_evidence_callback_joins_the_chain(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    extra = callbacks_config(tmp_path / "cb.json", ("LossSpikeEvidence", {"factor": 0.0}))
    assert fit("--config", extra, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "4") == 0
    run_dir = tmp_path / read_latest(tmp_path)
    spikes = [r["body"] for r in receipts(run_dir) if r["kind"] == "example_loss_spike"]
    assert [s["step"] for s in spikes] == [2, 3, 4]
    assert main(["receipts", "verify", str(run_dir)]) == 0
    from lit_psion.core.receipts import RECEIPT_KINDS

    monkeypatch.delitem(RECEIPT_KINDS, "example_loss_spike")  # where the callback's module is not imported
    for args in (["receipts", "verify", str(run_dir)], ["doctor", str(run_dir)]):
        capsys.readouterr()
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "'example_loss_spike' were not checked" in out or "'example_loss_spike' was not checked" in out, out


@pytest.mark.parametrize("kind", ["checkpoint", "trainer_step", "chain_seal", "checkpoint, by a subclass of its body"])
def test_a_callback_cannot_write_a_receipt_of_lit_psions_own_kinds(tmp_path: Path, kind: str,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """A checkpoint, step or seal receipt says what lit_psion did; a user's callback emitting one was written into
    the chain as if lit_psion had (a checkpoint that never existed, a step never taken, a seal mid-run)."""
    forge = callbacks_config(tmp_path / "cb.json", ("ForgeAt", {"kind": kind}))
    assert fit("--config", forge, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "3") == 5
    said = kind.split(",")[0]
    assert f"ForgeAt emitted a {said!r} receipt, one of lit_psion's own kinds" in capsys.readouterr().err
    run_dir = tmp_path / read_latest(tmp_path)
    assert read_json(run_dir / "run.json")["status"] == "failed"
    assert [r["body"].get("stage_id") for r in receipts(run_dir)].count("s") == 0
    assert main(["receipts", "verify", str(run_dir)]) == 0
