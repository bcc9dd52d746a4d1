"""A plugin class whose module imports a package that is not installed is named as such, not as a typo."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_psion.cli import main
from tests.helpers import TINY


@pytest.mark.parametrize("given", ["--trainer.callbacks+=needs_a_package.Evidence", "--model=needs_a_package.Model"])
def test_a_class_whose_module_imports_a_missing_package_names_that_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, given: str
) -> None:
    """It said "no class 'needs_a_package.Evidence' to import (No module named 'not_installed_here'); check the
    class_path's module and class name": both were right; the module's own import of a package was not."""
    (tmp_path / "needs_a_package.py").write_text("import not_installed_here\n\nclass Evidence:\n    pass\n\n"
                                                 "class Model:\n    pass\n")  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    capsys.readouterr()
    assert main(["fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path / "runs"), given]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "'needs_a_package', the module of needs_a_package." in err[0], err
    assert "imports 'not_installed_here', which is not installed" in err[0] and "install it" in err[0], err
    assert not (tmp_path / "runs").exists()
