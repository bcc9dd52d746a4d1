"""A checkpoint outside a run is held to its manifest alone, so a manifest rewritten over other tensors verifies;
loading it into the model must still refuse what does not fit (a tensor added, removed or reshaped) as a bad
checkpoint, exit 4, not crash with torch's RuntimeError (exit 1, "unexpected error")."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lit_psion.cli import main
from lit_psion.core import atomic_write_json, read_json, sha256_file
from lit_psion.core.run import read_latest
from tests.helpers import fit

Tensors = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3") == 0
    return root / read_latest(root) / "checkpoints" / "step-000003"


def _first_matrix(tensors: Tensors) -> str:
    return next(name for name, value in tensors.items() if value.dim() == 2)


CHANGES: dict[str, Callable[[Tensors], None]] = {
    "extra": lambda t: t.update(zzz_extra=torch.zeros(3)),
    "missing": lambda t: t.pop(_first_matrix(t)),
    "reshaped": lambda t: t.update({_first_matrix(t): torch.zeros(5, 7)}),
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("command", ["fit", "validate"])
def test_other_tensors_under_a_rewritten_manifest_are_a_bad_checkpoint(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, change: str, command: str
) -> None:
    loose = Path(shutil.copytree(checkpoint, tmp_path / "loose"))
    weights = loose / "model.safetensors"
    with safe_open(weights, framework="pt") as handle:
        tensors, metadata = {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()  # noqa: SIM118
    CHANGES[change](tensors)
    save_file(tensors, weights, metadata=metadata)
    manifest = read_json(loose / "manifest.json")
    manifest["files"]["model.safetensors"] = {"bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
    atomic_write_json(loose / "manifest.json", manifest)
    assert main(["ckpt", "verify", str(loose)]) == 0  # (held to its manifest alone)
    capsys.readouterr()
    extra = ["--trainer.max_steps", "5"] if command == "fit" else []
    code = main([command, "--config", "fixtures/tiny.yaml", "--ckpt_path", str(loose),
                 "--trainer.default_root_dir", str(tmp_path / "runs"), *extra])  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion:")]
    assert code == 4, err
    assert any("weights do not fit DecoderLM" in line for line in err), err
    assert not any("unexpected error" in line for line in err), err


def test_another_models_optimizer_state_is_a_bad_checkpoint_and_no_run_is_made(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """trainer_state.pt of a wider model (its manifest rewritten): training started and failed at the first
    update ("The size of tensor a (64) must match", exit 1), leaving a failed run that latest_run.json named."""
    root = tmp_path / "wide"
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3",
               "--model.init_args.decoder.d_model", "64") == 0  # fmt: skip
    loose = Path(shutil.copytree(checkpoint, tmp_path / "loose"))
    shutil.copy(root / read_latest(root) / "checkpoints" / "step-000003" / "trainer_state.pt", loose)
    manifest = read_json(loose / "manifest.json")
    state = loose / "trainer_state.pt"
    manifest["files"]["trainer_state.pt"] = {"bytes": state.stat().st_size, "sha256": sha256_file(state)}
    atomic_write_json(loose / "manifest.json", manifest)
    before = read_latest(checkpoint.parents[2])
    capsys.readouterr()
    code = main(["fit", "--config", "fixtures/tiny.yaml", "--ckpt_path", str(loose), "--trainer.max_steps", "5",
                 "--trainer.default_root_dir", str(checkpoint.parents[2])])  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit_psion:")]
    assert code == 4 and any("optimizer state does not fit the model" in line for line in err), err
    assert read_latest(checkpoint.parents[2]) == before  # --ckpt_path last still finds the run it found
