"""The package's structure, checked from its own source: the seams DESIGN.md names stay closed.

- no module imports an underscore name from another module (a contract is public or it is not one);
- no import cycle between modules, counting imports inside functions and for type checking (they do not
  make a cycle go away);
- no source file over 400 lines (split along a concern).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "resbackbone"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, names)`` for every import of a package module, wherever it stands.

    Imports inside functions and under ``if TYPE_CHECKING:`` count: both tie one module to the other.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "resbackbone":
                found.append((node.lineno, module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "resbackbone":
                    found.append((node.lineno, alias.name, []))
    return found


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for _, module, names in _imports(name, path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES] or [module]
            graph[name].update(t for t in targets if t in MODULES and t != name)
    return graph


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_imports_an_underscore_name_from_another() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {n} from {module}"
        for name, path in MODULES.items()
        for line, module, names in _imports(name, path)
        for n in names
        if _private(n) or any(_private(part) for part in module.split("."))
    ]
    assert not offenders, "make these part of a public contract:\n" + "\n".join(offenders)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph = _edges()
    # the structure checks themselves must see the graph: the package imports its modules
    assert (
        "resbackbone.weights" in graph["resbackbone.backbone"] and "resbackbone.specs" in graph["resbackbone.registry"]
    )
    cycles = _cycles(graph)
    described = [" ↔ ".join(c) + ": " + "; ".join(f"{a} → {sorted(graph[a] & set(c))}" for a in c) for c in cycles]
    assert not cycles, "import cycles (imports inside functions count):\n" + "\n".join(described)


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name", sorted(MODULES), ids=str)
def test_no_file_over_400_lines(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines: split it along a concern"
