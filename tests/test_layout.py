"""The package's structure (issue 30): short functions, a one-way import graph, no import cycle.

The checks read the source of `mobilebert_jax/` with `ast` and import nothing, so they see every module,
also those whose optional dependencies are missing, and every import, also those inside functions.

An import `from a.b import c` is an edge to the module `a.b.c` when that module exists, else to `a.b`
(the package's `__init__`); `import a.b.c` is an edge to `a.b.c`. The packages a module is in are not
edges of their own: Python runs them first, but a package `__init__` that imports its submodules would
otherwise make every module of the package a cycle.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = "mobilebert_jax"
PACKAGE = pathlib.Path(__file__).resolve().parent.parent / ROOT
MAX_FUNCTION_LINES = 100

# Layers, top to bottom: cli > jobs > {training, export, distill} > {tasks, checkpoints} > {model, text}
# > storage (local paths and gs:// URLs, `mobilebert_jax/storage.py`: every layer reads and writes through it).
# Each subpackage may import itself and the subpackages listed here, nothing else. Within a layer:
# distill builds on training; training and export import neither each other nor distill; tasks and
# checkpoints are independent, and so are model and text. pipelines sit beside jobs: they use the
# tasks' post-processing, the loader, export's runtime, the model and the tokenizer, never jobs nor
# training (so that `pipeline(...)` does not pull in the trainer).
MAY_IMPORT: dict[str, set[str]] = {
    "cli": {
        "jobs",
        "pipelines",
        "training",
        "export",
        "distill",
        "tasks",
        "checkpoints",
        "model",
        "text",
        "storage",
    },
    "jobs": {"training", "export", "distill", "tasks", "checkpoints", "model", "text", "storage"},
    "distill": {"training", "tasks", "checkpoints", "model", "text", "storage"},
    "training": {"tasks", "checkpoints", "model", "text", "storage"},
    "export": {"tasks", "checkpoints", "model", "text", "storage"},
    "pipelines": {"export", "tasks", "checkpoints", "model", "text", "storage"},
    "tasks": {"model", "text", "storage"},
    "checkpoints": {"model", "text", "storage"},
    "model": {"storage"},
    "text": {"storage"},
    # `mobilebert_jax/__init__.py`, the public API (from_pretrained, the model classes, the tokenizer,
    # pipeline, tune_host_allocator); no module of the library imports it (see `test_import_graph`).
    "": {"pipelines", "training", "checkpoints", "model", "text", "storage"},
    "storage": set(),
}

# Imports inside functions that may break the layer order, each with why it must stay:
# {(importing module, imported module): why}. None is needed today.
LAZY_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, pathlib.Path]:
    """Dotted module name -> file of every module of the package (a package is its `__init__`)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = (ROOT, *path.relative_to(PACKAGE).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()}


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}"


def _layer(module: str) -> str:
    """The subpackage a module belongs to ("" for the package's own `__init__`)."""
    return module.split(".")[1] if "." in module else ""


def _imports(module: str) -> list[tuple[str, str, int, bool]]:
    """(imported module, imported name or "", line, lazy) of every import of a package module."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    return _imports_in(TREES[module], package)


def _imports_in(tree: ast.AST, package: str) -> list[tuple[str, str, int, bool]]:
    found = []

    def visit(node: ast.AST, lazy: bool) -> None:  # lazy: inside a function
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                        found.append((alias.name, "", child.lineno, lazy))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the package `level - 1` steps up
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([child.module] if child.module else []))
                if base == ROOT or base.startswith(ROOT + "."):
                    for alias in child.names:
                        sub = f"{base}.{alias.name}"
                        target = sub if sub in MODULES else base
                        found.append((target, "" if target == sub else alias.name, child.lineno, lazy))
            visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def test_every_subpackage_has_a_layer():
    unplaced = sorted({_layer(m) for m in MODULES} - set(MAY_IMPORT))
    assert not unplaced, f"place these in a layer of MAY_IMPORT in tests/test_layout.py: {unplaced}"


def _long_functions(tree: ast.AST, limit: int) -> list[tuple[int, str, int]]:
    """(lines, qualified name, def line) of every function or method longer than `limit` lines."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                lines = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and lines > limit:
                    found.append((lines, name, child.lineno))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def test_functions_are_short():
    """No function or method is longer than MAX_FUNCTION_LINES, from its def line to its last line."""
    long = []
    for module, tree in TREES.items():
        for lines, name, line in _long_functions(tree, MAX_FUNCTION_LINES):
            long.append((lines, f"{name}:{_where(module, line)}:{lines} lines"))
    long.sort(reverse=True)
    if long:
        pytest.fail(
            f"functions over {MAX_FUNCTION_LINES} lines, longest first:\n" + "\n".join(t for _, t in long)
        )


def test_import_graph_runs_one_way():
    """Every import of a package module (inside functions too) goes down the layers of MAY_IMPORT."""
    bad = set()
    for module in MODULES:
        layer = _layer(module)
        for target, _, line, lazy in _imports(module):
            to = _layer(target)
            if target == ROOT:
                bad.add(f"{_where(module, line)}: imports the package root {ROOT} (import the module)")
            elif to != layer and to not in MAY_IMPORT.get(layer, set()):
                if lazy and (module, target) in LAZY_EXCEPTIONS:
                    continue
                kind = "lazy import" if lazy else "import"
                bad.add(f"{_where(module, line)}: {kind} of {target} ({layer or ROOT} -> {to})")
    if bad:
        pytest.fail("imports against the layer order:\n" + "\n".join(sorted(bad)))


def test_no_private_names_cross_subpackages():
    """An underscore name is not imported from another subpackage, nor in cli/ from another command.

    A private name used elsewhere is a hidden second API (e.g. a reader table that a second command
    reuses instead of the loader); each cli module is one command, so its private names stay in it.
    """
    bad = []
    for module in MODULES:
        for target, name, line, _ in _imports(module):
            private = name.startswith("_") or target.rpartition(".")[2].startswith("_")
            if not private or target == module:
                continue
            if _layer(target) != _layer(module) or _layer(module) == "cli":
                bad.append(f"{_where(module, line)}: imports {name or target} from {target}")
    if bad:
        pytest.fail("private names imported across modules:\n" + "\n".join(sorted(bad)))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return comps


def test_pipelines_load_neither_jobs_nor_training():
    """At run time too (the package root and lazy imports included): what `import mobilebert_jax.pipelines`
    and building a pipeline module pull in, in a fresh interpreter."""
    code = (
        "import sys, mobilebert_jax.pipelines, mobilebert_jax.tasks\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('mobilebert_jax.jobs', 'mobilebert_jax.training',"
        " 'mobilebert_jax.cli')))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing pipelines loaded: {out.stdout.strip()}"


def test_no_import_cycle():
    """No two modules import each other, directly or through others (lazy imports count)."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    lines: dict[tuple[str, str], int] = {}
    for module in MODULES:
        for target, _, line, lazy in _imports(module):
            if target != module and not (lazy and (module, target) in LAZY_EXCEPTIONS):
                edges[module].add(target)
                lines.setdefault((module, target), line)
    report = []
    for comp in _cycles(edges):
        inside = [(a, b) for a in comp for b in sorted(edges[a]) if b in comp]
        report.append("; ".join(f"{_where(a, lines[a, b])} -> {b}" for a, b in inside))
    if report:
        pytest.fail("import cycles:\n" + "\n".join(report))


def test_checks_see_what_they_check():
    """The parsers find lazy, relative and from-imports, long nested functions, and cycles."""
    source = (
        "import mobilebert_jax.model.heads\n"
        "from mobilebert_jax.model import encoder, heads\n"
        "from mobilebert_jax.text.tokenizer import MobileBertTokenizer\n"
        "class A:\n"
        "    def f(self):\n"
        "        from . import tokenizer\n"
        "        def g():\n" + "            x = 1\n" * 3
    )
    found = _imports_in(ast.parse(source), f"{ROOT}.text")
    assert found == [
        (f"{ROOT}.model.heads", "", 1, False),
        (f"{ROOT}.model.encoder", "", 2, False),
        (f"{ROOT}.model.heads", "", 2, False),
        (f"{ROOT}.text.tokenizer", "MobileBertTokenizer", 3, False),
        (f"{ROOT}.text.tokenizer", "", 6, True),
    ]
    assert _long_functions(ast.parse(source), 4) == [(6, "A.f", 5)]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
