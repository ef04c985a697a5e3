"""The package's shape: no import cycle between its modules and no private name imported across modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "interp"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported interp module, imported names) for every import in the file, top-level or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "interp":
            names = [a.name for a in node.names]
            for name in names:  # `from interp.model import hooks` imports the module interp.model.hooks
                if f"{node.module}.{name}" in modules:
                    out.append((f"{node.module}.{name}", []))
            rest = [n for n in names if f"{node.module}.{n}" not in modules]
            if rest:
                out.append((node.module, rest))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "interp"]
    return out


def test_no_import_cycle():
    modules = _modules()
    graph = {m: sorted({dep for dep, _ in _imports(p, modules) if dep in modules and dep != m})
             for m, p in modules.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for dep in graph[m]:
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [m, dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_private_name_imported_across_modules():
    modules = _modules()
    bad = []
    for m, p in modules.items():
        for dep, names in _imports(p, modules):
            bad += [f"{m} imports {dep}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, "\n".join(bad)


def test_no_reexport_shims():
    """A module's ``__all__`` lists what it defines; only a package ``__init__`` gathers names from elsewhere."""
    bad = []
    for m, p in _modules().items():
        if p.name == "__init__.py":
            continue
        tree = ast.parse(p.read_text(encoding="utf-8"))
        imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                bad += [f"{m}.__all__ re-exports {e.value}" for e in node.value.elts if e.value in imported]
    assert not bad, "\n".join(bad)


def test_readme_layout_matches_the_tree():
    """Every package of interp/ (and every top-level module) is in the README's layout block, and nothing else."""
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("## Layout"):]
    block = block[block.index("```\n") + 4:]
    block = block[:block.index("```")]
    listed = set(re.findall(r"^  (\w+(?:/|\.py))", block, re.M))
    actual = {f"{p.name}/" for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    actual |= {p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "notebook_utils.py")}
    assert listed == actual, f"README layout lists {sorted(listed - actual)} extra, misses {sorted(actual - listed)}"
