"""Retention keeps a checkpoint ``ckpt consolidate`` copied, and only for a copy that is one: a file, a link or a
directory without a manifest under ``consolidated/`` (planted by anyone) kept a checkpoint from retention forever."""

from __future__ import annotations

from pathlib import Path

from lit_psion.core import RunLayout


def test_only_a_consolidated_checkpoint_directory_holds_its_step_from_retention(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path, "r1")
    for step in range(1, 6):
        (layout.checkpoint(step)).mkdir(parents=True)
    layout.consolidated.mkdir()
    (layout.consolidated / "step-000001").write_text("a file")
    (layout.consolidated / "step-000002").mkdir()  # no manifest
    (layout.consolidated / "step-000003").mkdir()
    (layout.consolidated / "step-000003" / "manifest.json").write_text("{}")
    (layout.consolidated / "step-000004").symlink_to(layout.consolidated / "step-000003")
    layout.prune_checkpoints(1, keep=(), untrusted=())
    assert [path.name for path in layout.checkpoint_dirs()] == ["step-000003", "step-000005"]
