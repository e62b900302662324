"""The package's structure: no import cycle between modules (lazy imports inside functions
count too), attention/ depends on neither models/ nor engine/, and no file is over 500 lines."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "turboctx"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the turboctx modules it imports (resolved to modules that exist)."""
    files = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                if n.startswith("turboctx") and n in files:
                    deps.add(n)
        deps.discard(mod)
        graph[mod] = deps
    return graph


def _packages_of(mod: str) -> set[str]:
    parts = mod.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycles():
    graph = _imports()
    # a package's __init__ re-exporting its modules is not a cycle with them
    for mod, deps in graph.items():
        graph[mod] = {d for d in deps if d not in _packages_of(mod)}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_attention_imports_neither_models_nor_engine():
    for mod, deps in _imports().items():
        if mod.startswith("turboctx.attention"):
            bad = {d for d in deps if d.startswith(("turboctx.models", "turboctx.engine",
                                                    "turboctx.config", "turboctx.server"))}
            assert not bad, (mod, bad)


def test_no_file_over_500_lines():
    root = SRC.parent
    long = {str(p.relative_to(root)): n for p in [*PKG.rglob("*.py"), *(root / "tests").glob("*.py"),
                                                  *(root / "tools").glob("*.py")]
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
