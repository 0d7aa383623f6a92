"""The package's shape, held by its imports: the core is pure, and no module imports itself back.

Read from the source (ast), so every import counts, including those inside functions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "generator"

# What the core may not import: IO, processes and process-wide state belong to the shell.
CORE_FORBIDDEN = (
    "os", "subprocess", "gc", "ctypes", "socket", "signal", "tempfile", "shutil", "pathlib", "io",
)  # fmt: skip
# Calls that read or write files without an import of their own (a builtin, a method, or a
# loader that reads templates lazily): the shell makes them and passes the results in.
CORE_IO_CALLS = frozenset(
    {"open", "read_text", "write_text", "read_bytes", "write_bytes", "FileSystemLoader",
     "PackageLoader"}
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every module `path` imports (absolute names) and the line it does it on."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno
            for alias in node.names:  # `from generator.site import pages` imports a module
                yield f"{base}.{alias.name}", node.lineno


def internal_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a module, not a name in it)."""
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, _ in imports(path):
            if target in known and target != name and target != "generator":
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back() -> None:
    assert cycles(internal_graph()) == []


def test_the_core_does_no_io_and_imports_only_the_core() -> None:
    found = []
    for name, path in modules().items():
        if not name.startswith("generator.core"):
            continue
        for target, line in imports(path):
            root = target.split(".")[0]
            if root in CORE_FORBIDDEN:
                found.append(f"{name}:{line} imports {target}")
            elif root == "generator" and not (
                target.startswith("generator.core") or target == "generator"
            ):
                found.append(f"{name}:{line} imports {target} (outside the core)")
    assert found == []


def test_cycle_finder_finds_a_cycle() -> None:
    """The check above must be able to fail."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen: set[str] = set()
    pending = list(graph[start])
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.add(module)
            pending.extend(graph[module])
    return seen


def test_the_registry_records_import_no_backend() -> None:
    backends = {"generator.registry.etcd2", "generator.registry.etcd3", "generator.registry.file"}
    assert not reaches(internal_graph(), "generator.registry.base") & backends


def test_the_key_layout_imports_nothing_of_the_project() -> None:
    assert internal_graph()["generator.core.keys"] == set()


def test_the_core_calls_nothing_that_reads_or_writes_files() -> None:
    found = []
    for name, path in modules().items():
        if not name.startswith("generator.core"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if called in CORE_IO_CALLS:
                found.append(f"{name}:{node.lineno} calls {called}")
    assert found == []
