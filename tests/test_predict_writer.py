"""``predict`` writes its predictions only through a prediction writer, and says so when there is none."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.run import read_latest
from tests.helpers import TINY, fit


def test_predict_writes_its_predictions_with_the_writer_and_says_so_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    """predict returned its predictions to no one: exit 0, nothing written or printed."""
    import torch
    from safetensors.torch import load_file

    root = ("--trainer.default_root_dir", str(tmp_path / "runs"))
    assert fit(*root, "--trainer.max_steps", "3") == 0
    args = ["predict", "--config", TINY, *root, "--ckpt_path", "last", "--trainer.limit_predict_batches", "2"]
    capsys.readouterr()
    assert main(args) == 0
    assert "predict writes its predictions nowhere without a prediction writer" in capsys.readouterr().err
    out = tmp_path / "predictions"
    writer = ["--trainer.callbacks+=lit_psion.callbacks.PredictionWriter", f"--trainer.callbacks.out={out}"]
    assert main([*args, *writer]) == 0
    assert "predictions nowhere" not in capsys.readouterr().err
    assert not [w for w in recwarn if "Couldn't infer the batch indices" in str(w.message)]  # (batches by place)
    tensors = load_file(out / "predictions-rank0.safetensors")
    record = read_json(out / "predictions.json")
    assert sorted(tensors) == ["batch-000000", "batch-000001"] == sorted(record["shapes"])
    assert record["ckpt_path"].endswith("step-000003") and tensors["batch-000000"].dtype == torch.int64
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    run = tmp_path / "runs" / read_latest(tmp_path / "runs")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")  # was exit 1 (FileExistsError) after every batch was predicted
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")  # under it, no directory can be made: was exit 1 after predicting
    for place, says in ((out, "already holds files"), (run / "predictions", "is inside run directory"),
                        (dangling, "which does not exist"), (a_file / "predictions", "cannot be created")):
        assert main([*args[:-2], "--trainer.callbacks+=lit_psion.callbacks.PredictionWriter",
                     f"--trainer.callbacks.out={place}"]) == 2  # fmt: skip
        assert says in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before and not (run / "predictions").exists()
