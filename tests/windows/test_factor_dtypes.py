"""Factors of a dtype or shape no adapter training writes (a 0-dim tensor, float8) are rejected as ``malformed`` and
the window closes; an aggregate of a float8 factor a validator accepted before this check still reconciles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lit_psion.cli import main
from lit_psion.core import read_json
from lit_psion.core.windows import ACCEPTED, REJECTED
from lit_psion.windows import adversary, validate
from lit_psion.windows.aggregate import Adapter, exact_delta, stacked
from lit_psion.windows.contribute import train_adapter
from lit_psion.windows.coordinator import close_window, open_window
from lit_psion.windows.program import Program, plan_window
from tests.windows.helpers import new_program

Tensors = dict[str, torch.Tensor]


def _b_as(dtype: torch.dtype) -> Callable[[Tensors], Tensors]:
    return lambda tensors: {k: v.to(dtype) if k.endswith("lora_b") else v for k, v in tensors.items()}


# case -> what the forger does to an honestly trained adapter (each carries its own correct adapter_sha256)
FORGED: dict[str, Callable[[Tensors], Tensors]] = {
    "zero_dim_extra": lambda tensors: {**tensors, "model.head.lora_scale": torch.tensor(1.0)},
    "zero_dim_factor": lambda t: {k: torch.tensor(0.5) if k.endswith("lora_a") else v for k, v in t.items()},
    "float8_e4m3fn": lambda tensors: {k: v.to(torch.float8_e4m3fn) for k, v in tensors.items()},
    "float8_e5m2_b": _b_as(torch.float8_e5m2),
}


@pytest.fixture(scope="module")
def forged(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Program:
    """w-0001: three honest contributions, then one of each FORGED case, closed with `window close`."""
    root = new_program(base, tmp_path_factory.mktemp("dtypes") / "windows")
    program = Program(root)
    plan = plan_window(root, contributors=3 + len(FORGED))
    open_window(root, plan.window_id)
    for index, assignment in enumerate(plan.assignments):
        tensors, summary = train_adapter(program, plan, assignment)
        if index >= 3:
            tensors = list(FORGED.values())[index - 3](tensors)
        adversary.place(program, plan, assignment, tensors, summary)
    assert main(["window", "close", str(root), plan.window_id]) == 0
    return program


def test_factors_no_training_writes_are_malformed_and_the_window_closes(forged: Program) -> None:
    dispositions = read_json(forged.window_dir("w-0001") / "dispositions.json")["assignments"]
    cases = ["honest"] * 3 + list(FORGED)
    for (_, entry), case in zip(sorted(dispositions.items()), cases, strict=True):
        if case == "honest":
            assert entry["disposition"] == ACCEPTED, (case, entry)
        else:
            assert entry["disposition"] == REJECTED and "malformed" in entry["reasons"], (case, entry)
    assert forged.state("w-0001") == "reconciled"
    assert main(["window", "verify", str(forged.root)]) == 0


def test_a_float8_factor_accepted_before_the_check_still_reconciles(forged: Program,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A window scored by a validator that let a float8 lora_b through (accepted) is aggregated, not exit 1."""
    root = forged.root
    plan = plan_window(root, contributors=1)
    open_window(root, plan.window_id)
    tensors, summary = train_adapter(forged, plan, plan.assignments[0])
    adversary.place(forged, plan, plan.assignments[0], _b_as(torch.float8_e5m2)(tensors), summary)
    monkeypatch.setattr(validate, "FACTOR_DTYPES", (*validate.FACTOR_DTYPES, torch.float8_e5m2))  # the old check
    validate.seal(root, plan.window_id)
    validate.score(root, plan.window_id)
    entry = read_json(forged.window_dir(plan.window_id) / "dispositions.json")["assignments"]["a00"]
    assert entry["disposition"] == ACCEPTED, entry
    monkeypatch.undo()
    promotion = close_window(root, plan.window_id)
    assert promotion["weights"] == {"a00": 1.0}, promotion
    assert main(["window", "verify", str(root)]) == 0


def test_the_stacked_adapter_takes_float8_factors_in_float32() -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = {"model.head.lora_a": torch.randn(4, 16, generator=generator),
               "model.head.lora_b": torch.randn(24, 4, generator=generator).to(torch.float8_e5m2)}  # fmt: skip
    adapter = Adapter(tensors, 4, 8.0, 1.0)
    stack = stacked([adapter])
    assert stack["model.head.lora_b"].dtype == torch.float32
    from_stack = stack["model.head.lora_b"].double() @ stack["model.head.lora_a"].double()
    assert torch.allclose(from_stack, exact_delta([adapter])["model.head"])
