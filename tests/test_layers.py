"""The import graph points one way: ``cli`` -> ``app`` -> ``ops``/``middle`` -> ``proxy``
-> ``protocol``, and no module imports itself back through others.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a
cycle hidden there still ties the modules together for whoever reads or changes them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mtproxy

PACKAGE = Path(mtproxy.__file__).parent

#: What each layer may import besides itself. Modules at the top of the package
#: (state.py, errors.py, ...) are "base": small services any layer may use.
ALLOWED = {
    "protocol": {"protocol"},
    "config": {"protocol", "base"},
    "base": {"protocol", "config", "base"},
    "proxy": {"protocol", "config", "base"},
    "middle": {"proxy", "protocol", "config", "base"},
    "ops": {"proxy", "protocol", "config", "base"},
    "app": {"ops", "middle", "proxy", "protocol", "config", "base"},
    "cli": {"app", "ops", "middle", "proxy", "protocol", "config", "base"},
}
LAYERS = {"protocol", "config", "proxy", "middle", "ops", "cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return "cli" if module.endswith("__main__") else "base"
    if parts[1] == "app":
        return "app"
    return parts[1] if parts[1] in LAYERS else "base"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports (a name imported from a package counts as
    the submodule when there is one)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    # A package's __init__ re-exporting its submodules is not a dependency of theirs.
    return {
        module_name(p): {
            m for m in imports_of(p, modules) if not module_name(p).startswith(m + ".")
        }
        for p in paths
    }


def test_layers_point_one_way() -> None:
    wrong = sorted(
        f"{mod} ({layer(mod)}) imports {dep} ({layer(dep)})"
        for mod, deps in graph().items()
        for dep in deps
        if layer(dep) != layer(mod) and layer(dep) not in ALLOWED[layer(mod)]
    )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_protocol_core_does_no_io() -> None:
    """protocol/ and the session state machine are sans-I/O: no asyncio, no sockets."""
    io = {"asyncio", "socket", "selectors", "uvloop"}
    sans_io = [*sorted((PACKAGE / "protocol").rglob("*.py")), PACKAGE / "proxy" / "session.py"]
    offenders = []
    for path in sans_io:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            offenders += [f"{module_name(path)}: {n}" for n in names if n.split(".")[0] in io]
    assert len(sans_io) > 15
    assert not offenders, offenders


def test_the_graph_sees_imports() -> None:
    """The checks above would pass on an empty graph: make sure they do not look at one."""
    edges = graph()
    assert "mtproxy.proxy.upstream" in edges["mtproxy.middle.upstream"]
    assert "mtproxy.app" in edges["mtproxy.cli.run"]
    assert layer("mtproxy.state") == "base" and layer("mtproxy.app") == "app"
