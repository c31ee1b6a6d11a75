"""The import graph of ``ldm`` (read with ast, nothing imported): no cycles, no upward imports.

The layers (docs/architecture.md): the bottom modules (errors, fileio, seeding, ranges) import nothing else
from ``ldm``; ``ldm/diffusion`` and ``ldm/modules`` never import Lightning or ``ldm.models``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ldm"
BOTTOM = {"ldm.errors", "ldm.fileio", "ldm.seeding", "ldm.ranges"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(name: str, top_level_only: bool) -> set[str]:
    """The modules ``name`` imports (``from ldm import x`` counts as ``ldm.x`` when that is a module)."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return found


def ldm_imports(name: str, top_level_only: bool = True) -> set[str]:
    return {m for m in imports(name, top_level_only) if m in MODULES and m != "ldm" and m != name}


def test_the_walk_sees_the_package():
    assert {"ldm.config", "ldm.checkpoints", "ldm.fileio", "ldm.modules.unet", "ldm.diffusion.ddim"} <= set(MODULES)
    assert "ldm.fileio" in ldm_imports("ldm.checkpoints")


def test_no_import_cycle_among_ldm_modules():
    """Imports, at module level or inside functions, form no cycle (a cycle makes import order matter and
    hides a missing layer; an import moved into a function only hides it)."""
    graph = {name: ldm_imports(name, top_level_only=False) for name in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


@pytest.mark.parametrize("name", sorted(BOTTOM))
def test_the_bottom_modules_import_nothing_above_them(name):
    assert ldm_imports(name, top_level_only=False) <= BOTTOM, ldm_imports(name, top_level_only=False) - BOTTOM


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith(("ldm.modules", "ldm.diffusion"))))
def test_networks_and_samplers_never_import_lightning_or_models(name):
    found = imports(name, top_level_only=False)
    bad = {m for m in found if m.split(".")[0] in ("pytorch_lightning", "lightning") or m.startswith("ldm.models")}
    assert not bad, f"{name} imports {sorted(bad)}"
