"""An allocation the machine refuses is the sizes asked for, named in one line (exit 2), not an unexpected error:
a model under the size limit (its float32 weights fit in physical memory) can still not fit beside what else
the machine holds."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from lit_psion.commands.fit_args import known_cause
from lit_psion.core.errors import ConfigError, lit_psion_cause
from tests.helpers import subprocess_env

SHAKESPEARE = "configs/shakespeare_char.yaml"


def _address_space(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_a_model_the_allocator_refuses_is_exit_2_and_leaves_no_run(tmp_path: Path) -> None:
    """It was exit 1: "unexpected error: RuntimeError: [enforce fail at alloc_cpu.cpp:127] ... DefaultCPUAllocator:
    can't allocate memory". About 1.6B parameters (6.4 GB) under a 5 GB address space."""
    command = [sys.executable, "-m", "lit_psion", "fit", "--config", SHAKESPEARE, "--data.files",
               "fixtures/tiny_corpus.txt", "--model.decoder.d_model", "4096", "--model.decoder.n_head", "32",
               "--model.decoder.n_layer", "8", "--trainer.max_steps", "2", "--trainer.default_root_dir",
               str(tmp_path / "runs")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=_address_space(5 * 10**9),
                            env=subprocess_env(OMP_NUM_THREADS="1", LIT_PSION_CACHE=str(tmp_path / "cache")))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("lit_psion:")]
    assert len(lines) == 1 and "ran out of memory (can't allocate memory: you tried to allocate" in lines[0], lines
    assert "--model.help CLASS_PATH lists them" in lines[0] and "Traceback" not in result.stderr
    assert not any((tmp_path / "runs").glob("*/run.json"))


@pytest.mark.parametrize("error", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 10 bytes. Error code 12 (Cannot allocate memory)"),
    type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2.00 GiB"),
])  # fmt: skip
def test_each_kind_of_refused_allocation_is_named(error: BaseException) -> None:
    """By the training commands' classifier and by every other command's (generate, adapter merge, events)."""
    wrapped = RuntimeError("while building the model")
    wrapped.__cause__ = error
    for classify in (known_cause, lit_psion_cause):
        cause = classify(wrapped)
        assert isinstance(cause, ConfigError) and str(cause).startswith("the machine ran out of memory ("), classify


def test_other_runtime_errors_are_not_called_memory() -> None:
    assert known_cause(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert lit_psion_cause(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


def test_data_too_large_to_make_names_the_data_module_not_the_model(tmp_path: Path) -> None:
    """It said to lower the model's sizes: a generator's sample count (``--data.n_test 1000000000``) is the cause."""
    command = [sys.executable, "-m", "lit_psion", "fit", "--config", "configs/graph_core_oscillators.yaml",
               "--data.n_test", "1000000000", "--trainer.max_steps", "1", "--trainer.default_root_dir",
               str(tmp_path / "runs")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=_address_space(5 * 10**9),
                            env=subprocess_env(OMP_NUM_THREADS="1"))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("lit_psion:")]
    assert len(lines) == 1 and "ran out of memory (can't allocate memory" in lines[0], lines
    assert "while DynamicsDataModule made its data" in lines[0] and "--model.help" not in lines[0]
    assert "--data.help lit_psion.datamodules.dynamics.DynamicsDataModule lists them" in lines[0]
    assert not any((tmp_path / "runs").glob("*/run.json"))


class _Generator(L.LightningDataModule):
    def setup(self, stage: str) -> None:
        raise MemoryError()


def test_a_refused_allocation_inside_a_data_modules_own_method_names_that_class() -> None:
    try:
        _Generator().setup("fit")
    except MemoryError as error:
        wrapped = RuntimeError("while setting up")
        wrapped.__cause__ = error
        for classify in (known_cause, lit_psion_cause):
            message = str(classify(wrapped))
            assert "(MemoryError) while _Generator made its data" in message, message
            assert f"--data.help {__name__}._Generator lists them" in message
