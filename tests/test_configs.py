"""Every preset in configs/ parses and trains for 2 steps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lit_psion.core import read_json
from lit_psion.core.run import read_latest
from tests.helpers import fit, fit_subprocess

PRESETS = sorted(p for p in Path("configs").glob("*.yaml") if "\nwindow:" not in p.read_text())
"""The fit presets (a window program's settings are tested in tests/windows)."""
# Small stand-ins keep each preset to seconds: the stdlib source is capped, any --data.files is the fixture.
SMALL_DATA = {
    "stdlib": ("--data.init_args.max_bytes", "150000", "--data.init_args.vocab_size", "300"),
    "files": ("--data.files", "fixtures/tiny_corpus.txt"),
    "events": ("--data.n_train", "40", "--data.n_val", "10", "--data.tokenizer_traces", "30"),
    "dynamics": ("--data.n_train", "8", "--data.n_val", "2", "--data.steps", "40", "--data.window", "8"),
}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained DecoderLM for the adapter presets to fine-tune."""
    root = tmp_path_factory.mktemp("base")
    assert fit("--trainer.default_root_dir", str(root), "--trainer.max_steps", "3") == 0
    return root / read_latest(root)


def _small_data(preset: Path, base: Path | None = None) -> tuple[str, ...]:
    text = preset.read_text()
    if "AdapterLM" in text:
        assert base is not None
        tokenizer = str(base / "tokenizer.json")
        return (*SMALL_DATA["stdlib"][:2], "--model.init_args.base_checkpoint", str(base),
                "--data.init_args.tokenizer_file", tokenizer, "--data.init_args.block_size", "32",
                "--trainer.callbacks", "[]")  # fmt: skip
    if "EventTraceDataModule" in text:
        return SMALL_DATA["events"]
    if "DynamicsDataModule" in text:
        return SMALL_DATA["dynamics"]
    return SMALL_DATA["stdlib"] if "files: stdlib" in text else SMALL_DATA["files"]


def test_configs_folder_has_presets() -> None:
    assert {"decoder_tiny.yaml", "shakespeare_char.yaml"} <= {p.name for p in PRESETS}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_preset_runs_two_steps(preset: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    data = _small_data(preset, request.getfixturevalue("base_run") if "AdapterLM" in preset.read_text() else None)
    code = fit(
        *data, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "2",
        "--trainer.default_root_dir", str(tmp_path), config=str(preset),
    )  # fmt: skip
    assert code == 0
    run_dir = tmp_path / read_latest(tmp_path)
    assert read_json(run_dir / "run.json")["status"] == "completed"
    assert read_json(run_dir / "run.json")["global_step"] == 2


@pytest.mark.parametrize("overlay", sorted(Path("configs/overlays").glob("*.yaml")), ids=lambda p: p.name)
def test_overlay_applies_on_top_of_a_preset(overlay: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the fsdp overlay starts 2 ranks on 2 cores
    args = ("--config", str(overlay), "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path))
    if "deepspeed" in overlay.name and not (torch.cuda.is_available() and importlib.util.find_spec("deepspeed")):
        result = fit_subprocess(*args)  # CUDA only: refused in one line, naming the CPU alternative
        assert result.returncode == 2 and "configs/overlays/fsdp.yaml" in result.stderr, result.stderr[-2000:]
        assert not list(tmp_path.iterdir())
        return
    if "elastic" in overlay.name or "fsdp" in overlay.name:  # a process group outliving the test in pytest's process
        result = fit_subprocess(*args)
        assert result.returncode == 0, result.stderr[-2000:]
    else:
        assert fit(*args) == 0
    assert read_json(tmp_path / read_latest(tmp_path) / "run.json")["status"] == "completed"


@pytest.mark.parametrize("preset", [p for p in PRESETS if "BASE_RUN_ID" in p.read_text()], ids=lambda p: p.name)
def test_an_adapter_preset_run_as_shipped_names_its_placeholder(preset: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Run unedited, it said the tokenizer file 'runs/BASE_RUN_ID/tokenizer.json' was not found (exit 3), never
    naming the base run the preset waits for."""
    capsys.readouterr()
    assert fit("--trainer.default_root_dir", str(tmp_path), config=str(preset)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.init_args.base_checkpoint, data.init_args.tokenizer_file: still the preset's " \
        "placeholder BASE_RUN_ID; give the base run directory" in err[0], err
    assert not any(tmp_path.iterdir())
