"""The package's import graph: no cycles (not even under TYPE_CHECKING or inside functions),
and lower layers never import upper ones.

The graph is read from the source with ``ast`` (every ``import`` statement anywhere in a
module, whether or not it runs), so it sees what a reader of the code sees.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fleet_reimage"

# Lowest first. A module may import modules of its own layer or of layers below it.
LAYERS: list[set[str]] = [
    {"errors", "units", "yamlsafe", "logs", "safefiles"},
    {"batch", "journal", "emulator"},
    {"plan", "rollout"},
    {"engine"},
    {"views"},
    {"api"},
    {"cli"},
]
# The emulator is a program of its own (the engine may start it in-process): it may use the
# basics and nothing else of ours, so that it never checks the client with the client's code.
STANDALONE = {"emulator": {"errors", "units", "yamlsafe", "logs"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fleet_reimage"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("fleet_reimage"):
                continue
            # "from pkg import mod" imports the module pkg/mod.py (the package's own
            # __init__ runs whenever any of its modules is imported, so it adds nothing)
            submodules = {f"{module}.{a.name}" for a in node.names}
            submodules = {m for m in submodules if _path_of(m) is not None}
            found.update(submodules or {module})
    return found


def _path_of(module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    for path in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if path.is_file():
            return path
    return None


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {m for m in _imports(path, name) if m in modules and m != name}
        graph[name] = targets
    return graph


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _layer_of(top: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if top in layer), None)


def test_the_import_graph_has_no_cycle() -> None:
    assert _cycles(_graph()) == []


def test_lower_layers_never_import_upper_ones() -> None:
    wrong = []
    for module, targets in _graph().items():
        top = _top(module)
        if top in ("", "__main__"):
            continue
        allowed = STANDALONE.get(top)
        for target in targets:
            other = _top(target)
            if other in (top, ""):
                continue
            if allowed is not None:
                if other not in allowed:
                    wrong.append(f"{module} -> {target}")
                continue
            mine, theirs = _layer_of(top), _layer_of(other)
            if mine is None or theirs is None:
                wrong.append(f"{module} -> {target} (layer unknown)")
            elif theirs > mine:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_top_level_keeps_a_handful_of_modules() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("__"))
    assert top == ["api", "errors", "logs", "safefiles", "units", "yamlsafe"]


@pytest.mark.parametrize("cycle", [["a", "b"]])
def test_the_cycle_finder_finds_a_cycle(cycle: list[str]) -> None:
    # The checker itself must be able to fail: a two-module cycle and a self-contained chain.
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [cycle]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _where_things_are() -> str:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Where things are\n", 1)[1]
    return section.split("\n## ", 1)[0]


def test_the_readme_map_names_every_module() -> None:
    """A newcomer finds a module from the README's map: each file is named there, by its
    name or by a family pattern such as ``postgres*.py``."""
    text = _where_things_are()
    families = [pattern.removesuffix("*.py") for pattern in re.findall(r"\b(\w+)\*\.py", text)]
    unnamed = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.stem not in {"__init__", "__main__"}
        and not re.search(rf"\b{re.escape(path.stem)}(\.py)?\b", text)
        and not any(path.stem.startswith(family) for family in families)
    )
    assert not unnamed, f"README 'Where things are' does not name: {', '.join(unnamed)}"
