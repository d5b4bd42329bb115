"""The package's import graph: layered, no circles (docs/design.md, "Layers").

Every `import` statement in `src/difflab` counts, also the lazy ones inside functions and the
ones under `TYPE_CHECKING`: a lazy import still ties the lower module to the higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "difflab"

# Lower layers never import higher ones; packages of one layer do not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("fileio", "devices", "allocator", "images", "shipped", "diffusion"),
    ("nets", "sampling", "data", "discrete", "interop"),
    ("config",),
    ("train", "eval"),
    ("methods",),
    ("api",),
    ("cli",),
]
# `difflab/__init__.py` is the public facade: it may re-export anything, nothing imports it.
FACADE = PACKAGE


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def imported_names(name: str, path: Path, known: set[str]) -> set[str]:
    """The difflab modules that `name` (at `path`) imports, resolved to modules in `known`."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one
            targets = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known]
            targets = targets or [module]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported_names(name, path, known) for name, path in mods.items()}


def layer_of(module: str) -> tuple[int, str]:
    if module == FACADE:
        return len(LAYERS), FACADE
    top = module.split(".")[1]
    for level, names in enumerate(LAYERS):
        if top in names:
            return level, top
    raise AssertionError(f"module {module} is in no layer: add `{top}` to LAYERS")


def test_every_module_has_a_layer():
    layers = {module: layer_of(module)[0] for module in modules()}  # raises for a module in none
    assert len(layers) > 50 and set(layers.values()) == set(range(len(LAYERS) + 1))


def test_no_module_imports_a_layer_above_or_beside_it():
    bad = []
    for source, targets in import_graph().items():
        (src_level, src_top) = layer_of(source)
        for target in sorted(targets):
            (dst_level, dst_top) = layer_of(target)
            if dst_level > src_level or (dst_level == src_level and dst_top != src_top):
                bad.append(f"{source} -> {target}")
    assert not bad, "imports that climb a layer or cross to a sibling:\n" + "\n".join(bad)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of nodes, or None (iterative DFS, three colours)."""
    colour = dict.fromkeys(graph, 0)
    for root in sorted(graph):
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child) :] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_checks_can_fail(tmp_path):
    """The walker sees a lazy relative import, and the cycle finder sees a circle."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    probe = tmp_path / "x.py"
    probe.write_text("def f():\n    from ..train.trainer import Trainer\n")
    known = {"difflab.train", "difflab.train.trainer", "difflab.eval.x"}
    assert imported_names("difflab.eval.x", probe, known) == {"difflab.train.trainer"}
    assert layer_of("difflab.train.trainer") == (3, "train")
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("difflab.nowhere")
