"""The data package's structure: the format table is the one source of format facts; imports stay acyclic."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

import resbackbone.data
import resbackbone.data.config
from resbackbone.data import DataConfig
from resbackbone.data.formats import FORMAT_SPECS, FORMAT_TASKS, FORMATS, FormatSpec

from .conftest import REPO_ROOT

DATA = REPO_ROOT / "resbackbone" / "data"


def test_format_names_and_tasks_come_from_the_table() -> None:
    assert FORMATS == tuple(FORMAT_SPECS) == get_args(DataConfig.model_fields["format"].annotation)
    assert {name: spec.tasks for name, spec in FORMAT_SPECS.items()} == FORMAT_TASKS
    for module in (resbackbone.data, resbackbone.data.config):
        assert module.FORMATS is FORMATS and module.FORMAT_TASKS is FORMAT_TASKS
    assert all(isinstance(spec, FormatSpec) and spec.name == name for name, spec in FORMAT_SPECS.items())


@pytest.mark.parametrize("name", list(FORMAT_SPECS))
def test_every_format_is_read_or_read_as_another(name: str) -> None:
    spec = FORMAT_SPECS[name]
    if spec.read_as:  # generated: read with other formats, one per task
        assert spec.generate is not None and spec.index is None and set(spec.read_as) == set(spec.tasks)
        assert all(FORMAT_SPECS[section["format"]].index is not None for section in spec.read_as.values())
    else:
        assert spec.index is not None and (spec.classes is not None or spec.find_classes is not None)
        assert spec.short_field in spec.split_fields and {f for f, _ in spec.required} <= set(spec.split_fields)


def _module(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, ast.ImportFrom, bool]]:
    """``(module, node, inside a function)`` for every ``from resbackbone... import`` of a file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(fn)
    }
    package = _module(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            if target.startswith("resbackbone"):
                found.append((target, node, id(node) in nested))
    return found


def test_data_modules_import_no_underscore_names_and_no_package_module_inside_functions() -> None:
    for path in sorted(DATA.rglob("*.py")):
        for target, node, inside in _imports(path):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{path.relative_to(REPO_ROOT)} imports {private} from {target}"
            assert not inside, f"{path.relative_to(REPO_ROOT)} imports {target} inside a function (line {node.lineno})"


def test_data_modules_import_each_other_without_cycles() -> None:
    modules = {_module(p): p for p in DATA.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target, node, _ in _imports(path):
            for alias in node.names:  # `from . import x` names a module
                edges.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        graph[name] = {e for e in edges if e in modules and e != name}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            pytest.fail(f"import cycle: {' -> '.join([*stack[stack.index(name) :], name])}")
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
