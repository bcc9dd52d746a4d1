"""VerifiedDeepSpeedStrategy on CUDA (``pytest -m gpu``): DeepSpeed's checkpoint directory under lit_psion's manifest.

Skipped without a GPU or without the ``deepspeed`` extra; CPU refusal is tested in ``test_sharded.py``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.checkpoint import MANIFEST_FILE
from lit_psion.core.run import read_latest
from tests.helpers import TINY

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs the deepspeed extra"),
]


@pytest.mark.parametrize("stage", [2, 3])
def test_a_deepspeed_checkpoint_is_sealed_verified_and_resumed(stage: int, tmp_path: Path) -> None:
    common = ("--config", TINY, "--config", f"configs/overlays/deepspeed_zero{stage}.yaml", "--trainer.devices", "1",
              "--trainer.default_root_dir", str(tmp_path))  # fmt: skip
    assert main(["fit", *common, "--trainer.max_steps", "6"]) == 0
    run = tmp_path / read_latest(tmp_path)
    checkpoint = run / "checkpoints" / "step-000006"
    files = read_json(checkpoint / MANIFEST_FILE)["files"]
    assert any(name.startswith("checkpoint/") and "model_states" in name for name in files)
    assert main(["ckpt", "verify", str(run)]) == 0
    assert main(["fit", *common, "--trainer.max_steps", "9", "--ckpt_path", "last"]) == 0
    chain = [json.loads(line) for line in (run / "receipts.jsonl").read_text().splitlines()]
    assert [r["body"]["step_out"] for r in chain if r["kind"] == "trainer_step"][-1] == 9
    target = next(checkpoint.parent.glob("step-000009")) / next(n for n in files if "model_states" in n)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 1
    target.write_bytes(bytes(data))
    assert main(["ckpt", "verify", str(run)]) == 4  # step 9 is durable: its damage fails (a resume uses step 6)
    assert main(["fit", *common, "--ckpt_path", str(target.parent.parent)]) == 4
