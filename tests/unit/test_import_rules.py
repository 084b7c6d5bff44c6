"""The import rules of the source tree, read from the source with `ast`.

Each role's package may import only what lies below it: `common` nothing of
ours, `protocol` only `common`, the chunk server, the client and Raft only
those two, the master those and Raft, the CLI anything but the test harness.
So one side of a conversation can change without reading the other side's
internals, and what both sides must agree on lives in `protocol` or `common`.
Every import counts, also one inside a function or under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "chunkfs"

_BASE = {"common"}
#: The packages of ours each package may import (besides itself and the bare ``chunkfs``).
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "protocol": _BASE,
    "raft": _BASE | {"protocol"},
    "cs": _BASE | {"protocol"},
    "client": _BASE | {"protocol"},
    "mds": _BASE | {"protocol", "raft"},
    "cli": {"common", "protocol", "raft", "cs", "client", "mds"},
    "testing": {"common", "protocol", "raft", "cs", "client", "mds", "cli"},
    # chunkfs/__init__.py and __main__.py: the command's entry point.
    "": {"cli"},
}


def imported_modules(source: str, module: str, type_checking: bool = True) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in `source`, the module `module` (relative ones resolved).

    With `type_checking` False, imports under ``if TYPE_CHECKING:`` are left out (they never run).
    """
    package = module.split(".")[:-1]
    tree = ast.parse(source)
    skipped: set[int] = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                skipped.update(id(sub) for sub in ast.walk(node))
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            # ``from chunkfs import mds`` imports the package chunkfs.mds.
            out.extend((node.lineno, f"{base}.{alias.name}" if base == "chunkfs" else base)
                       for alias in node.names)
    return out


def _modules() -> list[tuple[Path, str]]:
    """Every module under src/chunkfs, named as its path says (``chunkfs.mds.__init__`` for a package)."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        out.append((path, ".".join(path.relative_to(SRC.parent).with_suffix("").parts)))
    assert len(out) > 50, f"found only {len(out)} modules under {SRC}"
    return out


def _package(dotted: str) -> str | None:
    """``chunkfs.mds.store`` -> ``mds``; the top level (``__main__``, ``__version__``) -> ``""``; not ours: None."""
    parts = dotted.split(".")
    if parts[0] != "chunkfs":
        return None
    return parts[1] if len(parts) > 1 and (SRC / parts[1] / "__init__.py").exists() else ""


def violations(rule: dict[str, set[str]]) -> list[str]:
    out = []
    for path, module in _modules():
        own = _package(module)
        assert own is not None
        for line, name in imported_modules(path.read_text(), module):
            target = _package(name)
            if target is None or target == own or target == "":
                continue  # not ours, its own package, or the top level (the version)
            if target not in rule[own]:
                out.append(f"{path.relative_to(SRC.parent)}:{line} imports {name} "
                           f"({own or 'chunkfs'} may import only {', '.join(sorted(rule[own])) or 'nothing of ours'})")
    return out


def test_every_package_has_a_rule() -> None:
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED) - {""}, "add the new package to ALLOWED, with what it may import"


def test_no_role_imports_across_or_upward() -> None:
    found = violations(ALLOWED)
    assert not found, "imports across roles or upward:\n" + "\n".join(found)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports when it runs (``TYPE_CHECKING`` imports aside)."""
    names = {}
    for path, module in _modules():
        names[module.removesuffix(".__init__")] = (path, module)
    graph: dict[str, set[str]] = {}
    for name, (path, module) in names.items():
        targets = set()
        for _, imported in imported_modules(path.read_text(), module, type_checking=False):
            # ``from chunkfs.cli import files`` names a module; ``from chunkfs.cli.files import x`` its parent.
            target = imported if imported in names else imported.rsplit(".", 1)[0] if "." in imported else ""
            if target in names and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or round about (strongly connected)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph is a few hundred modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_round_about() -> None:
    """No circle of imports: each module can be read, loaded and changed from its imports down."""
    found = circles(import_graph())
    assert not found, "modules importing each other:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_circle_finder_finds_circles() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_only_the_harness_itself_imports_the_test_harness() -> None:
    """Product code never builds on test tooling (tests and benchmarks do, from outside src)."""
    found = [f"{path.relative_to(SRC.parent)}:{line} imports {name}"
             for path, module in _modules() if not module.startswith("chunkfs.testing")
             for line, name in imported_modules(path.read_text(), module)
             if name == "chunkfs.testing" or name.startswith("chunkfs.testing.")]
    assert not found, "\n".join(found)


def test_the_shipped_package_holds_no_simulator() -> None:
    """The Raft simulator is test tooling: it lives in tests/integration/raft, and nothing in src imports one."""
    here = [str(path.relative_to(SRC.parent)) for path, _ in _modules() if "simulator" in path.stem]
    assert not here, f"test tooling inside the shipped package: {here}"
    found = [f"{path.relative_to(SRC.parent)}:{line} imports {name}"
             for path, module in _modules() for line, name in imported_modules(path.read_text(), module)
             if "simulator" in name]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("source", "module", "expected"), [
    ("import chunkfs.mds.store", "chunkfs.client.x", ["chunkfs.mds.store"]),
    ("from chunkfs.mds.leases import LEASE_TTL", "chunkfs.client.x", ["chunkfs.mds.leases"]),
    ("from chunkfs import mds", "chunkfs.client.x", ["chunkfs.mds"]),
    ("from ..mds import store", "chunkfs.client.x", ["chunkfs.mds"]),
    ("from . import chunk_io", "chunkfs.client.x", ["chunkfs.client"]),
    ("def f():\n    from chunkfs.client.mds_link import MdsLink", "chunkfs.mds.x", ["chunkfs.client.mds_link"]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from chunkfs.mds.server import S",
     "chunkfs.cs.x", ["typing", "chunkfs.mds.server"]),
])
def test_the_reader_sees_every_kind_of_import(source: str, module: str, expected: list[str]) -> None:
    assert [name for _, name in imported_modules(source, module)] == expected
