"""The package's layer order, written once: imports go one way (down), and never in a circle.

Every ``import`` in every module counts, also those inside functions and under
``TYPE_CHECKING``: a circle hidden by a late import is still a circle. A module may import from
its own layer or from any layer below; the layers follow the data path (raw files -> spec ->
prepared data -> batches -> model (+ fast) -> evaluation -> model artifact -> serving / API / CLI).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "deepfm"

# bottom to top; a module belongs to the first entry that is it or its package
LAYERS: list[tuple[str, ...]] = [
    ("deepfm.errors", "deepfm.version", "deepfm.io", "deepfm.hardware", "deepfm.masks"),
    ("deepfm.data",),  # raw files -> spec -> prepared data -> batches
    ("deepfm.models",),  # plain models, as in the papers
    ("deepfm.fast",),  # the speed layer, chosen outside the models
    ("deepfm.evaluation",),  # scoring, metrics, file evaluation, plots
    ("deepfm.config",),  # the options of a run
    ("deepfm.artifact",),  # model.pt and the loaded TrainedModel
    ("deepfm.training",),  # the loop, optimizers, state, run folder, warm start, distribution
    ("deepfm.experiments",),  # tune, compare, tracking
    ("deepfm.serving",),  # HTTP, batch prediction, export
    ("deepfm.api", "deepfm"),  # deepfm.fit / deepfm.load
    ("deepfm.cli", "deepfm.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[1]):
                best = (i, len(name))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = importer if MODULES[importer].name == "__init__.py" else importer.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        package = package.rsplit(".", 1)[0]
    return f"{package}.{node.module}" if node.module else package


def imports(module: str, source: str | None = None) -> set[str]:
    """The package modules ``module`` imports (submodules named in ``from X import y`` included)."""
    found: set[str] = set()
    source = MODULES[module].read_text() if source is None else source
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == "deepfm" or a.name.startswith("deepfm.")}
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, node)
            if base != "deepfm" and not base.startswith("deepfm."):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m != module}


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        layer(module)


def upward(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{m} ({LAYERS[layer(m)][0]}) imports {d} ({LAYERS[layer(d)][0]})"
        for m, deps in graph.items()
        for d in sorted(deps)
        if layer(d) > layer(m)
    ]


def test_imports_go_down_the_layers() -> None:
    found = upward(GRAPH)
    assert not found, "upward imports:\n" + "\n".join(found)


def test_no_import_circles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(m: str) -> None:  # Tarjan's strongly connected components
        index[m] = low[m] = counter[0]
        counter[0] += 1
        stack.append(m)
        on_stack.add(m)
        for d in GRAPH[m]:
            if d not in index:
                visit(d)
                low[m] = min(low[m], low[d])
            elif d in on_stack:
                low[m] = min(low[m], index[d])
        if low[m] == index[m]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == m:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_checker_sees_late_relative_and_type_only_imports() -> None:
    """What the old code did (an upward import inside a function) is caught, in every spelling."""
    late = "def f():\n    from deepfm.serving.predict import read_records\n"
    relative = "def f():\n    from ..serving import predict\n"
    typing = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from deepfm import api\n"
    for source in (late, relative, typing):
        graph = {"deepfm.data.layouts": imports("deepfm.data.layouts", source)}
        assert upward(graph), source
    assert not upward({"deepfm.data.layouts": imports("deepfm.data.layouts", "from deepfm import errors")})


def test_building_the_command_line_imports_neither_torch_nor_the_data_libraries() -> None:
    """``deepfm --help`` and option errors stay instant: the parsers import only light modules."""
    import subprocess
    import sys

    code = (
        "import sys; from deepfm.cli.main import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'polars', 'pandas', 'pyarrow', 'pyspark') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
