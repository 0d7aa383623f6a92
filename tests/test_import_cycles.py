"""No import cycle through the registry, register and key-layout modules: none of them imports
(at the top or lazily inside a function) a module that imports it back, directly or through
others. Read from the source, so a lazy import counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import generator

ROOT = Path(generator.__file__).parent
CHECKED = ("generator.registry", "generator.register", "generator.core.keys")


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """Each generator module and the generator modules it imports anywhere in its source."""
    modules = {_name(path): path for path in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module)
                # `from generator.register import command` imports a module too
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {module for module in imported if module in modules and module != name}
    return graph


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    pending = list(graph[start])
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.add(module)
            pending.extend(graph[module])
    return seen


def test_no_registry_or_register_module_imports_one_that_imports_it_back() -> None:
    graph = _graph()
    checked = [name for name in graph if name.startswith(CHECKED)]
    assert "generator.registry.base" in checked and "generator.register.command" in checked
    cycles = sorted(name for name in checked if name in _reaches(graph, name))
    assert cycles == []


def test_the_records_module_imports_no_backend() -> None:
    graph = _graph()
    backends = {"generator.registry.etcd2", "generator.registry.etcd3", "generator.registry.file"}
    assert not _reaches(graph, "generator.registry.base") & backends


def test_the_key_layout_is_pure() -> None:
    """core/keys imports nothing of the project (no registry, no IO)."""
    assert _graph()["generator.core.keys"] == set()
