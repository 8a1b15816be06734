"""The import graph of the project's packages: no cycles, arrows one way, deferred imports named as such.

Arrows: dags -> stages -> kernels, schemas; never back. Module-level and function-local imports both count,
so a cycle cannot hide in a function body. A function-local import is allowed only to defer a heavy package
(torch, pyspark, airflow, ...) or, at the CLI/DAG boundary, a stage that loads one, and says so with a
``# deferred: <reason>`` comment on its line or at the top of its block (within 4 lines).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "kernels", "schemas", "dags")
# where a project module may be imported late: the CLI and the DAG (to keep start-up and parsing light), and
# kernels (the dispatcher imports the Triton backend only when it runs, so CPU-only imports never need triton)
BOUNDARY = ("stages.cli", "dags", "kernels")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an imported dotted name lives in (``stages.core.config.from_mapping`` -> its module)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> list[tuple[ast.stmt, list[str], bool]]:
    """(node, imported dotted names, is function-local) for every import statement of ``module``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    local: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.append((node, [a.name for a in node.names], id(node) in local))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            out.append((node, [base] + [f"{base}.{a.name}" for a in node.names], id(node) in local))
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for _, names, _ in _imports(module, path):
            for name in names:
                target = _resolve(name)
                # a package's __init__ may import its own modules, and a module its own package
                if target and target != module and not target.startswith(module + ".") \
                        and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_the_graph_sees_every_package_and_its_edges():
    graph = _graph()
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    assert "stages.core.config" in graph["stages.pipeline.registry"]  # a module-level import
    assert any(t.startswith("stages.") for t in graph["dags.lum_daily"])  # function-local imports count too


def test_cycle_detection_finds_a_planted_cycle():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(planted) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(("source", "forbidden"), [("kernels", "stages"), ("schemas", "stages"),
                                                  ("stages", "dags"), ("kernels", "dags"), ("schemas", "dags")])
def test_arrows_point_one_way(source, forbidden):
    wrong = sorted(f"{m} -> {t}" for m, targets in _graph().items() if m.split(".")[0] == source
                   for t in targets if t.split(".")[0] == forbidden)
    assert not wrong, f"{source} must not import {forbidden}: " + ", ".join(wrong)


def test_function_local_imports_are_deferrals_that_say_so():
    bad = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for node, names, local in _imports(module, path):
            if not local:
                continue
            here = f"{path.relative_to(REPO)}:{node.lineno}"
            context = " ".join(lines[max(0, node.lineno - 5):node.lineno])  # its line or the 4 above (a block)
            if "# deferred:" not in context:
                bad.append(f"{here} (no '# deferred: <reason>' comment)")
            project = [n for n in names if _resolve(n)]
            if project and not module.startswith(BOUNDARY):
                bad.append(f"{here} imports project module {project[0]} late outside the CLI/DAG boundary")
    assert not bad, "function-local imports:\n" + "\n".join(bad)
