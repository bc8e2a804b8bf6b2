"""The layers run one way: kernels -> models -> data -> analyses -> views (and the CLI) -> apps.

Every ``import explorer....`` in the package, at module level or inside a function, must name a
layer at or below the importing module's own (utilities: errors, progress, cache; the package root
for its version and path)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "explorer"
RANKS = {"__init__": 0, "errors": 0, "progress": 0, "kernels": 1, "cache": 2, "models": 2, "data": 3, "analyses": 4, "views": 5,
         "cli": 5, "cli_sweep": 5}
KERNEL_ALLOWED = {"kernels"}    # kernels are pure torch: not even the utilities


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("explorer"):
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.startswith("explorer")]
    return names


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if own == "__init__":
        return
    for module in _imports(path):
        target = _layer(module)
        if own == "kernels":
            assert target in KERNEL_ALLOWED, f"{path.name}: a kernel imports {module}"
        else:
            assert RANKS[target] <= RANKS[own], f"{path.relative_to(PACKAGE)} ({own}) imports {module} ({target})"
