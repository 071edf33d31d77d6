"""Imports run one way: no cycle among rglcd/, components/ and pipelines/, nothing imports a layer above it,
and a private module (`x._y`) is imported only from inside its own package.

The graph is read from the source with `ast`, imports inside functions included, so a cycle cannot hide
behind a function-local import. Importing `a.b.c` also runs `a.b`'s `__init__`, so it counts as an import
of the package `a.b` too (unless the importer lives inside `a.b`).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rglcd", "components", "pipelines")

# Bottom to top: a module may import its own layer and the layers below, never one above. Every top-level
# part of rglcd/ needs a line here (a new one fails `test_every_part_of_rglcd_has_a_layer` until added).
LAYERS = [
    {"rglcd", "rglcd.config", "rglcd.plugins", "rglcd.devices", "rglcd.fsutil", "rglcd.solver", "rglcd.losses",
     "rglcd.storage"},
    {"rglcd.models", "rglcd.registry"},
    {"rglcd.data", "rglcd.rewards", "rglcd.sample"},                    # inputs, scorers, samplers
    {"rglcd.step", "rglcd.optim", "rglcd.lrm", "rglcd.export"},          # the method
    {"rglcd.train", "rglcd.evaluate"},                                   # programs built on the method
    {"rglcd.toy"},                                                       # the toy experiment
    {"components"},                                                      # thin KFP shells
    {"pipelines"},                                                       # the DAG
    {"rglcd.cli", "rglcd.__main__"},                                     # the command line, on top
]


# ---------------------------------------------------------------- the checker

def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under root/<package>."""
    mods = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _imported_names(tree: ast.AST, package: str) -> set[str]:
    """Every dotted name an import statement anywhere in `tree` (functions included) may load."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def _loaded_modules(name: str, mods: dict[str, Path]) -> set[str]:
    """The known modules importing `name` runs: the module itself and each package above it."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(mods)


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> the modules of `packages` it imports (its own ancestor packages left out)."""
    mods = module_files(root, packages)
    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        loaded = set().union(*(_loaded_modules(n, mods) for n in _imported_names(ast.parse(path.read_text()), package)))
        graph[mod] = {t for t in loaded if t != mod and not mod.startswith(t + ".")}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start), on_stack.add(start)
        while work:
            node, targets = work[-1]
            nxt = next((t for t in targets if t not in index or t in on_stack), None)
            if nxt is not None and nxt not in index:
                index[nxt] = low[nxt] = len(index)
                stack.append(nxt), on_stack.add(nxt)
                work.append((nxt, iter(sorted(graph.get(nxt, ())))))
            elif nxt is not None:
                low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while not component or component[-1] != node:
                        component.append(stack.pop())
                        on_stack.discard(component[-1])
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return cycles


def layer_of(module: str, layers: list[set[str]]) -> int | None:
    """The layer of the longest prefix of `module` named in `layers`."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        for level, names in enumerate(layers):
            if ".".join(parts[:i]) in names:
                return level
    return None


def upward_imports(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    """'a imports b' for every import of a higher layer."""
    found = []
    for mod, targets in sorted(graph.items()):
        for target in sorted(targets):
            low, high = layer_of(mod, layers), layer_of(target, layers)
            if low is not None and high is not None and high > low:
                found.append(f"{mod} (layer {low}) imports {target} (layer {high})")
    return found


def private_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a imports p._m' where a is outside package p (a private module is its package's business)."""
    found = []
    for mod, targets in sorted(graph.items()):
        for target in sorted(targets):
            parts = target.split(".")
            first = next((i for i, p in enumerate(parts) if p.startswith("_") and not p.startswith("__")), None)
            owner = None if first is None else ".".join(parts[:first])
            if owner is not None and mod != owner and not mod.startswith(owner + "."):
                found.append(f"{mod} imports the private module {target}")
    return found


# ---------------------------------------------------------------- the project

@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT, PACKAGES)


def test_the_project_has_no_import_cycle(graph):
    assert len(graph) > 80 and sum(map(len, graph.values())) > 200   # the whole tree was read
    assert find_cycles(graph) == []


def test_nothing_imports_a_layer_above_it(graph):
    assert upward_imports(graph, LAYERS) == []


def test_private_modules_are_imported_only_inside_their_package(graph):
    assert private_imports(graph) == []


def test_every_part_of_rglcd_has_a_layer(graph):
    missing = sorted({".".join(m.split(".")[:2]) for m in graph if layer_of(m, LAYERS) is None})
    assert missing == [], f"add {missing} to LAYERS in tests/test_imports.py"


# ---------------------------------------------------------------- the checker catches what it should

def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_behind_a_function_local_import_is_found(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "def f():\n    from pkg.high import g\n    return g\n",   # hidden in a function
        "pkg/high.py": "import pkg.low\n",
        "pkg/mid/__init__.py": "from . import leaf\n",
        "pkg/mid/leaf.py": "from ..low import f\n",                            # relative, no cycle
    })
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.mid.leaf"] == {"pkg.low"} and graph["pkg.mid"] == {"pkg.mid.leaf"}
    assert find_cycles(graph) == [["pkg.high", "pkg.low"]]


def test_importing_a_submodule_counts_as_importing_its_package(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/train/__init__.py": "from pkg.train.loop import run\n",
        "pkg/train/loop.py": "from pkg.step import step\nrun = 1\n",
        "pkg/train/setup.py": "",
        "pkg/step.py": "from pkg.train.setup import x\nstep = 1\n",              # runs pkg/train/__init__
    })
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == [["pkg.step", "pkg.train", "pkg.train.loop"]]


def test_upward_and_private_imports_are_found(tmp_path):
    _write(tmp_path, {
        "lib/__init__.py": "",
        "lib/core.py": "import app.main\n",
        "lib/cli/__init__.py": "from lib.cli import _common\n",
        "lib/cli/_common.py": "",
        "app/__init__.py": "",
        "app/main.py": "from lib.cli._common import x\n",
    })
    graph = import_graph(tmp_path, ("lib", "app"))
    layers = [{"lib"}, {"app"}]
    assert upward_imports(graph, layers) == ["lib.core (layer 0) imports app (layer 1)",
                                             "lib.core (layer 0) imports app.main (layer 1)"]
    assert private_imports(graph) == ["app.main imports the private module lib.cli._common"]
