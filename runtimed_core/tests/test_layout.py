"""The layout a newcomer relies on: no import cycles, a core that names no plugin."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import runtimed

PACKAGE = Path(runtimed.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports, anywhere in it (TYPE_CHECKING blocks
    too); ``from pkg import mod`` is an import of ``pkg.mod``, not of ``pkg``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found & modules


def _graph(paths: list[Path]) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in paths}
    return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_detector_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_daemon_modules_import_no_cycle():
    graph = _graph(sorted((PACKAGE / "daemon").glob("*.py")))
    assert {"runtimed.daemon.server", "runtimed.daemon.room", "runtimed.daemon.executor"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_module_of_the_core_imports_a_cycle():
    assert _cycle(_graph(sorted(PACKAGE.rglob("*.py")))) is None


def test_the_kernel_side_sees_the_room_only_through_its_interface():
    graph = _graph(sorted((PACKAGE / "daemon").glob("*.py")))
    for module in ("executor", "room_kernel", "outputs", "provisioning", "kernel"):
        assert "runtimed.daemon.room" not in graph[f"runtimed.daemon.{module}"], module
        assert "runtimed.daemon.server" not in graph[f"runtimed.daemon.{module}"], module


BUILT_IN = re.compile(r"(?<![a-z])(uv|conda|deno|pixi)(?![a-z])", re.IGNORECASE)
#: What the core may say of the built-in plugins outside docs: the seed's four status keys.
ALLOWED = {"uv_available", "conda_available", "uv_warming", "conda_warming"}


def _code_words(path: Path) -> list[tuple[int, str]]:
    """Names and string constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.append((node.lineno, node.value))
        elif isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words.append((node.lineno, node.name))
    return words


def test_the_core_names_no_built_in_plugin():
    found = [f"{path.relative_to(PACKAGE)}:{line}: {word!r}"
             for path in sorted(PACKAGE.rglob("*.py")) for line, word in _code_words(path)
             if word not in ALLOWED and BUILT_IN.search(word)]
    assert found == []


def test_docs_name_only_what_a_user_has():
    """The README and the packages' docstrings never point at files outside a clone."""
    root = PACKAGE.parents[2]
    texts = [root / "README.md", *root.glob("plugins/*/README.md"), *root.glob("bench/*.md")]
    texts += sorted(PACKAGE.rglob("*.py")) + sorted(root.glob("plugins/*/src/**/*.py"))
    found = [f"{path.relative_to(root)}: {word}" for path in texts for word in ("../shared", "REFERENCE.md")
             if word in path.read_text()]
    assert found == []
