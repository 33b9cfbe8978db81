"""The package's layers never point up and its modules import no cycle (read from the source with
`ast`: every import, at the top of a module or inside a function)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dsara"

# lowest first; a module may import its own layer and the layers below it, never one above
LAYERS = [
    ["dsara.errors", "dsara.version", "dsara.utils"],
    ["dsara.data"],
    ["dsara.arch"],
    ["dsara.attacks"],
    ["dsara.train"],
    ["dsara.search"],
    ["dsara.evaluate"],
    ["dsara.compress", "dsara.export"],
    ["dsara.study"],
    ["dsara.experiment"],
    ["dsara.plot"],
    ["dsara.bench"],
    ["dsara.commands", "dsara.cli", "dsara.__main__", "dsara"],
]
# packages of one layer that must not import each other either
SIBLINGS = [("dsara.compress", "dsara.export")]


def module_name(path: Path, root: Path = PACKAGE) -> tuple[str, bool]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root)[0]: p for p in root.rglob("*.py")}


def imports(path: Path, known: set[str], root: Path = PACKAGE) -> set[str]:
    """The dsara modules `path` imports (a name imported from a package counts as its submodule
    when there is one)."""
    name, is_pkg = module_name(path, root)
    package = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != "dsara" and not target.startswith("dsara."):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "dsara"}
    return out - {name}


def layer_of(module: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layering.py: add it")
    return best[0]


def violations(root: Path = PACKAGE) -> list[str]:
    mods = modules(root)
    graph = {m: imports(p, set(mods), root) for m, p in mods.items() if not m.startswith("dsara._data")}
    bad = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if d.startswith("dsara._data"):
                continue
            if layer_of(d) > layer_of(m):
                bad.append(f"{m} imports {d}: a lower layer imports a higher one")
            for a, b in SIBLINGS:
                if (m.startswith(a) and d.startswith(b)) or (m.startswith(b) and d.startswith(a)):
                    bad.append(f"{m} imports {d}: {a} and {b} are siblings")
    bad += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_layer_imports_a_higher_one_and_there_is_no_cycle():
    assert violations() == []


def test_every_module_is_in_a_layer():
    for m in modules():
        if not m.startswith("dsara._data"):
            layer_of(m)


@pytest.mark.parametrize("planted, says", [
    ("from ..train.loop import run\n", "dsara.data.planted imports dsara.train.loop"),
    ("from .split import split_train\n", "import cycle"),
])
def test_a_planted_upward_import_or_cycle_is_caught(tmp_path, planted, says):
    """The check fails on a copy of the package with one bad import added."""
    import shutil

    copy = tmp_path / "dsara"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "data" / "planted.py").write_text(planted)
    if "cycle" in says:  # split imports planted, planted imports split
        split = copy / "data" / "split.py"
        split.write_text(split.read_text() + "\nfrom .planted import *  # noqa\n")
    found = violations(copy)
    assert any(says in v for v in found), found
