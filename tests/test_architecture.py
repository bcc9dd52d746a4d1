"""The dependency arrows of docs/architecture.md, checked by parsing every import in the package.

Lazy imports inside functions count: an arrow is an arrow wherever the import statement sits.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAPPED = {folder: f"lit_psion.{folder}" for folder in ("callbacks", "datamodules", "strategies")}
LAYERS = ("core", "nn", "models", "callbacks", "datamodules", "strategies", "commands", "events", "sessions",
          "checkpoint_io", "consolidation", "resumable", "runs", "loggers", "profilers", "report", "adapters",
          "windows")  # fmt: skip
"""The package's parts: its folders and its top-level library modules."""
APPLICATIONS = {"commands", "sessions", "adapters", "events", "windows"}
FORBIDDEN = {
    "nn": {"models", "callbacks", "datamodules", "strategies", "events", "runs", "checkpoint_io", "loggers", "report",
           *APPLICATIONS},
    "models": {"callbacks", "datamodules", "strategies", "loggers", "report", *APPLICATIONS},
    "callbacks": {"models", "datamodules", "strategies", "runs", *APPLICATIONS},
    "strategies": {"callbacks", "datamodules", "models", "runs", "loggers", "report", *APPLICATIONS},
    "datamodules": {"callbacks", "strategies", "models", "runs", "checkpoint_io", "loggers", "report", "commands",
                    "sessions", "adapters", "windows"},
    "checkpoint_io": {"nn", "models", "callbacks", "datamodules", "strategies", "runs", "loggers", "report",
                      *APPLICATIONS},
    "consolidation": {"nn", "models", "callbacks", "datamodules", "strategies", "runs", "loggers", "report",
                      *APPLICATIONS},
    "resumable": {"nn", "models", "callbacks", "datamodules", "strategies", "checkpoint_io", "runs", "loggers",
                  "report", "profilers", *APPLICATIONS},
    "runs": {"nn", "models", "callbacks", "datamodules", "strategies", "loggers", "report", *APPLICATIONS},
    "loggers": {"nn", "models", "callbacks", "datamodules", "strategies", "runs", "checkpoint_io", "report",
                *APPLICATIONS},
    "report": {"nn", "models", "callbacks", "datamodules", "strategies", "runs", "checkpoint_io", *APPLICATIONS},
    "profilers": {"nn", "models", "callbacks", "datamodules", "strategies", "runs", "checkpoint_io", "loggers",
                  "report", *APPLICATIONS},
}
"""part -> the parts it must not import (core is checked separately: it imports only the standard library).
Applications (commands, sessions, adapters, events, windows) may use the library; the library never uses them."""
RUN_LAYOUT_NAMES = {"run.json", "config.yaml", "checkpoints", "pointer.json", "receipts.jsonl", "manifest.json",
                    "latest_run.json", "data_manifest.json", "metrics.csv", "skip_list.json", "membership.json",
                    "drain_requests.json", "tokenizer.json", "promotion.json"}  # fmt: skip
LAYOUT_OWNERS = {"lit_psion.core.layout", "lit_psion.core.checkpoint"}


def package_modules() -> Iterator[tuple[str, Path]]:
    """(module name, file) for every module of the installed package, mapped folders included."""
    for path in sorted((REPO / "lit_psion").rglob("*.py")):
        yield ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"), path
    for folder, package in MAPPED.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            yield ".".join((package, *parts)).removesuffix(".__init__"), path


def imports_of(module: str, path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (relative imports resolved against ``module``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # a package's own name for ``from . import x`` in its __init__, else its parent's
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [base])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "lit_psion" and parts[1] in LAYERS else None


MODULES = list(package_modules())


def test_the_walk_sees_every_layer() -> None:
    assert {layer_of(module) for module, _ in MODULES} >= set(LAYERS)


def test_every_module_belongs_to_a_part() -> None:
    entry_points = ("lit_psion", "lit_psion.cli", "lit_psion.__main__")
    loose = [module for module, _ in MODULES if layer_of(module) is None and module not in entry_points]
    assert not loose, f"modules outside every part of docs/architecture.md: {loose}"


@pytest.mark.parametrize(("module", "path"), [m for m in MODULES if layer_of(m[0]) == "core"], ids=lambda x: str(x))
def test_core_imports_only_the_standard_library_and_core(module: str, path: Path) -> None:
    for name in imports_of(module, path):
        top = name.split(".")[0]
        if top == "lit_psion":
            assert name.startswith("lit_psion.core"), f"{module} imports {name}"
        else:
            assert top in sys.stdlib_module_names or top == "__future__", f"{module} (core) imports {name}"


@pytest.mark.parametrize(("module", "path"), MODULES, ids=lambda x: str(x))
def test_nothing_imports_the_cli(module: str, path: Path) -> None:
    if module == "lit_psion.__main__":
        return
    assert not any(name == "lit_psion.cli" or name.startswith("lit_psion.cli.") for name in imports_of(module, path))


@pytest.mark.parametrize(("module", "path"), [m for m in MODULES if layer_of(m[0]) in FORBIDDEN], ids=lambda x: str(x))
def test_layers_import_only_what_the_arrows_allow(module: str, path: Path) -> None:
    forbidden = FORBIDDEN[layer_of(module)]
    bad = sorted(name for name in imports_of(module, path) if layer_of(name) in forbidden)
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize(("module", "path"), MODULES, ids=lambda x: str(x))
def test_only_core_spells_the_run_layout(module: str, path: Path) -> None:
    if module in LAYOUT_OWNERS:
        return
    tree = ast.parse(path.read_text(), str(path))
    spelled = sorted({node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and
                      isinstance(node.value, str) and node.value in RUN_LAYOUT_NAMES})  # fmt: skip
    assert not spelled, f"{module} spells {spelled}; use lit_psion.core.layout.RunLayout"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from lit_psion.callbacks.checkpoint import PointerCheckpoint\n")
    assert "lit_psion.callbacks.checkpoint" in imports_of("lit_psion.strategies.probe", probe)
    assert layer_of("lit_psion.callbacks.checkpoint") in FORBIDDEN["strategies"]
