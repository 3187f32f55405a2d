"""The shape of the code: the import graph of ``src/mmdisco`` has no cycle and no arrow from a
lower layer to a higher one (the layers of the README's Architecture section), and no
function in ``src/`` is longer than 80 lines.

Both read the source with :mod:`ast`, so every import counts: at module level, inside a
function (the CLI's lazy imports) and under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "mmdisco"
MAX_FUNCTION_LINES = 80

# Bottom to top. A module may import from its own layer and the layers below it. The key is
# the first name under mmdisco (a module or a package); "" is mmdisco/__init__.py, which
# imports nothing when loaded (its public names are imported on first use).
LAYERS: dict[str, int] = {
    **dict.fromkeys(["", "errors", "io", "shards", "media", "seeding"], 0),
    "diffusion": 1,
    **dict.fromkeys(["base_models", "discriminator"], 2),
    "guidance": 3,
    "sampling": 4,
    **dict.fromkeys(["training", "data", "metrics", "resampling"], 5),
    **dict.fromkeys(["pipeline", "config", "world", "toy"], 6),
    **dict.fromkeys(["demo", "world_pipeline", "app", "study", "experiment"], 7),
    "cli": 8,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.Import | ast.ImportFrom, package: str, modules: set[str]) -> list[str]:
    """The mmdisco modules one import statement names (``from pkg import name`` names the
    module ``pkg.name`` when there is one, else ``pkg``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: from the module's package, up level - 1 packages
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = []
    for name in names:
        while name and name not in modules:  # `import mmdisco.x.y` as the module it reaches
            name = name.rpartition(".")[0]
        if name.startswith("mmdisco"):
            found.append(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the mmdisco modules it imports anywhere in its source."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {
            target
            for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for target in _imported(node, package, set(modules))
            if target != name
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{source} (layer {LAYERS[_layer(source)]}) imports {target} "
        f"(layer {LAYERS[_layer(target)]})"
        for source in sorted(graph)
        for target in sorted(graph[source])
        if LAYERS[_layer(target)] > LAYERS[_layer(source)]
    ]


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Every function or method in src/ longer than ``limit`` lines (decorators and the
    docstring included: the lines a reader has to take in)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - first + 1
                if lines > limit:
                    where = f"{path.relative_to(SRC)}:{node.lineno}"
                    found.append(f"{where} {node.name} ({lines} lines)")
    return found


# ---------------------------------------------------------------- the checks


def test_every_module_has_a_layer():
    unplaced = sorted({_layer(m) for m in _modules()} - set(LAYERS))
    assert not unplaced, f"add these to LAYERS and the README's Architecture section: {unplaced}"


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_from_a_lower_layer_to_a_higher_one():
    found = upward_imports(import_graph())
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_no_function_over_80_lines():
    found = long_functions()
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(found)


def test_the_layers_are_the_readme_s():
    """The README's Architecture section lists the same layers, in the same order."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`" in line]
    readme_layers = {}
    for row in rows:
        level, names = row.split("|")[1:3]
        for name in names.split("`")[1::2]:
            readme_layers[name.removeprefix("mmdisco/").removesuffix("/")] = int(level)
    expected = {name or "__init__.py": level for name, level in LAYERS.items()}
    assert readme_layers == expected


# ---------------------------------------------------------------- the checks, checked


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_graph_resolves_every_kind_of_import(tmp_path, monkeypatch):
    """Relative and absolute imports, ``from package import module``, and imports inside a
    function all become edges; a cycle and an upward import are found."""
    _write(
        tmp_path / "mmdisco",
        {
            "__init__.py": "",
            "errors.py": "",
            "diffusion.py": "from . import errors\n",
            "guidance.py": "def f():\n    from mmdisco.sampling import g\n",
            "sampling.py": "import mmdisco.guidance\nfrom .discriminator import model\n",
            "discriminator/__init__.py": "from .model import D\n",
            "discriminator/model.py": "from ..diffusion import x\nfrom mmdisco import errors\n",
        },
    )
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "mmdisco")
    graph = import_graph()
    assert graph["mmdisco.diffusion"] == {"mmdisco.errors"}
    assert graph["mmdisco.guidance"] == {"mmdisco.sampling"}
    assert graph["mmdisco.sampling"] == {"mmdisco.guidance", "mmdisco.discriminator.model"}
    assert graph["mmdisco.discriminator"] == {"mmdisco.discriminator.model"}
    assert graph["mmdisco.discriminator.model"] == {"mmdisco.diffusion", "mmdisco.errors"}
    assert cycles(graph) == [["mmdisco.guidance", "mmdisco.sampling"]]
    assert upward_imports(graph) == [
        "mmdisco.guidance (layer 3) imports mmdisco.sampling (layer 4)"
    ]


def test_long_functions_are_counted_with_their_decorators(tmp_path, monkeypatch):
    """80 lines pass, 81 fail, and a decorator's line counts."""
    body = "".join(f"        x{i} = {i}\n" for i in range(79))
    _write(
        tmp_path,
        {
            "a.py": f"class A:\n    @staticmethod\n    def decorated():\n{body}",
            "b.py": f"class B:\n    def plain(self):\n{body}",
        },
    )
    monkeypatch.setitem(globals(), "SRC", tmp_path)
    assert long_functions() == ["a.py:3 decorated (81 lines)"]
