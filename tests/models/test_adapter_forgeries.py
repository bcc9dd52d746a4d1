"""Adapters every digest agrees with that still must not be merged: a base weight smuggled in beside the LoRA
factors, settings no fine-tune takes, factors whose update overflows (found by the model-families review)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lit_psion.cli import main
from tests.models.test_adapter import _forged, base, exported, tuned  # noqa: F401  (fixtures: a base, its export)

FORGED = {  # case: (forgery, what the one error line says, whether inspect refuses it too)
    "base-weight-added": (_forged(tensors=lambda w: {**w, "model.embed.weight": torch.zeros(2, 2)}),
                          "holds 'model.embed.weight', which is not a LoRA factor", True),
    "head-weight-added": (_forged(tensors=lambda w: {**w, "model.head.base.weight": torch.zeros(2, 2)}),
                          "holds 'model.head.base.weight', which is not a LoRA factor", True),
    "alpha-huge": (_forged("alpha", 1e300), "alpha is 1e+300, not a number in (0, 1e+06]", True),
    "target-unknown": (_forged("targets", ["bogus"]), "targets is ['bogus'], not a list of LoRA targets", True),
    "update-overflows": (_forged(tensors=lambda w: {k: v * 1e30 for k, v in w.items()}),
                         "gives a weight that is not finite (its factors are finite, their update overflows)", False),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FORGED))
def test_a_forged_adapter_is_refused_by_merge_and_nothing_is_written(
    case: str, base: Path, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811
) -> None:
    """A tensor named like a base weight was loaded over the verified base (strict=False) and merged, exit 0; an
    overflowing update was exit 1 (a ValueError) saying the adapter held NaN or inf."""
    adapter = tmp_path / "adapter"
    shutil.copytree(exported, adapter)
    forge, message, inspect_refuses = FORGED[case]
    forge(adapter)
    capsys.readouterr()
    assert main(["adapter", "merge", str(adapter), "--base", str(base), "--out", str(tmp_path / "merged")]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "merged").exists()
    assert main(["adapter", "inspect", str(adapter)]) == (4 if inspect_refuses else 0)


@pytest.mark.parametrize("command", ["export", "merge"])
def test_a_dangling_link_as_out_is_refused_before_any_work(
    command: str, base: Path, tuned: Path, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture  # noqa: F811
) -> None:
    """A symbolic link to nowhere as --out was exit 1 (FileExistsError) after the whole merge was done."""
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "nowhere" / "x")
    argv = ["adapter", "export", str(tuned), "--out", str(out)] if command == "export" else \
        ["adapter", "merge", str(exported), "--base", str(base), "--out", str(out)]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a symbolic link to" in err[0] and "which does not exist" in err[0], err
    assert not (tmp_path / "nowhere").exists()
