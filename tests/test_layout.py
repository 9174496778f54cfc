"""The package layout is the architecture: imports point down the tiers, no cycles, no shims.

Tiers, top to bottom (DESIGN.md, docs/architecture.md): ``cli`` / ``commands`` → ``modules`` /
``callbacks`` → ``runs`` → ``sampling`` / ``memory`` / ``checkpoints`` / ``eval`` / ``data`` →
``nets``. A module may import its own tier or lower ones, never a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lrag"

#: Rank of each top-level part of ``lrag``; an import must not go to a higher rank.
TIERS = {
    "cli": 5, "commands": 5, "golden": 5, "errors": 5,
    "modules": 4, "callbacks": 4,
    "eval": 3, "runs": 3,
    "sampling": 2, "memory": 2, "checkpoints": 2,
    "data": 1, "assets": 1,
    "nets": 0,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path) -> list[str]:
    """Every ``lrag`` module imported anywhere in the file (lazy imports included).

    Imports under ``if TYPE_CHECKING:`` are annotations only; they never run, so they are skipped.
    """
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lrag"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("lrag")]
    return found


def _tier(module: str) -> int:
    part = module.split(".")[1] if "." in module else "cli"
    return TIERS[part]


MODULES = _modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_the_tiers(name: str) -> None:
    if name == "lrag":
        return
    up = [m for m in _imports(MODULES[name]) if m != "lrag" and _tier(m) > _tier(name)]
    assert not up, f"{name} (tier {_tier(name)}) imports higher tiers: {up}"


def test_every_part_has_a_tier() -> None:
    parts = {n.split(".")[1] for n in MODULES if "." in n}
    assert parts <= set(TIERS), f"add {sorted(parts - set(TIERS))} to TIERS (and to docs/architecture.md)"


def test_no_import_cycles() -> None:
    graph = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_getattr_and_no_re_export_only_modules(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    defined = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign))]
    assert not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body), name
    imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    exported = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                     and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)), [])
    re_exported = sorted(set(exported) & imported)
    assert not re_exported, f"{name} re-exports {re_exported}: import them from where they are defined"
    if MODULES[name].name != "__init__.py":
        assert defined, f"{name} defines nothing"


def test_modules_holds_only_lightning_modules_and_their_losses() -> None:
    files = {p.name for p in (PACKAGE / "modules").glob("*.py")}
    assert files == {"__init__.py", "embedder.py", "generator.py", "backbone_fit.py", "losses.py"}
