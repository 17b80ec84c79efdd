"""The package's layer rule (docs/architecture.md), read from the source with ``ast``.

Layers, lowest first: a module imports from its own layer or the ones below, never above, and
the imports between pansight's modules (at module level, inside functions and under
``TYPE_CHECKING`` alike) form no cycle. An import inside a function is kept for optional heavy
dependencies and says so in a ``#`` comment on its line or the line above.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pansight

PACKAGE = Path(pansight.__file__).parent

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "structures", "config", "hardware")),
    ("ops", ("ops",)),
    ("models", ("models", "data", "metrics", "viz", "viz_prototypes", "tracking", "video")),
    ("engine", ("engine",)),
    ("export", ("export",)),
    ("api", ("api", "loading")),
    ("apps", ("predict", "predict_video", "demo", "serve", "cli", "__main__", "")),
]
"""Each layer and the top-level modules or subpackages of ``pansight`` in it ("": the package's
own ``__init__``)."""


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    in_function: bool
    commented: bool


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("pansight", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def pansight_imports(modules: dict[str, Path]) -> list[Import]:
    """Every import of a pansight module by a pansight module (the module a name is imported
    from, or the submodule itself when ``from package import submodule``)."""
    found = []
    for name, path in modules.items():
        source = path.read_text()
        lines = ["", *source.splitlines()]
        for node, in_function in _imports(ast.parse(source), False):
            commented = "#" in lines[node.lineno] or lines[node.lineno - 1].strip().startswith("#")
            for target in _targets(node, name, path.name == "__init__.py", modules):
                if target != name:
                    found.append(Import(name, target, node.lineno, in_function, commented))
    return found


def _imports(node: ast.AST, in_function: bool) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """The import statements under ``node``, each with whether it is inside a function."""
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            found.append((child, in_function))
        nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
        found += _imports(child, nested)
    return found


def _targets(node: ast.AST, importer: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = importer.split(".") if is_package else importer.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, base] if base else package)
        candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
    targets = set()
    for candidate in candidates:
        while candidate and candidate not in modules:
            candidate = candidate.rpartition(".")[0]
        if candidate.startswith("pansight"):
            targets.add(candidate)
    if isinstance(node, ast.ImportFrom):
        # ``from package import submodule`` imports the submodule, not the package's own code
        submodules = {t for t in targets if t != (node.module or "")}
        targets = submodules or targets
    return sorted(targets)


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for index, (_, members) in enumerate(LAYERS):
        if top in members:
            return index
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS")


def test_every_module_has_a_layer():
    for module in module_names():
        layer_of(module)


def test_no_module_imports_from_a_layer_above_it():
    upward = [
        f"{i.importer} ({LAYERS[layer_of(i.importer)][0]}) imports {i.imported} "
        f"({LAYERS[layer_of(i.imported)][0]}) at line {i.line}"
        for i in pansight_imports(module_names())
        if layer_of(i.imported) > layer_of(i.importer)
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for i in pansight_imports(module_names()):
        graph.setdefault(i.importer, set()).add(i.imported)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_inside_functions_say_why():
    silent = [
        f"{i.importer}:{i.line} imports {i.imported} inside a function without a comment"
        for i in pansight_imports(module_names())
        if i.in_function and not i.commented
    ]
    assert not silent, "\n".join(silent)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or ``None``."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return [*path[path.index(successor) :], successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
