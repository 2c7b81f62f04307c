"""The layers go one way, read from the source (every import, function-local ones included):

* data_prep is the base and never imports pipeline;
* nothing below the tools (pipeline/tools, data_prep/tools) imports them;
* commands are leaves: no library module imports a module that is a command (``python -m X``);
* pipeline's subpackages form a stack (``LAYERS``): each imports only from those below it;
* no module imports, directly or through others, itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("data_prep", "pipeline")

# pipeline's subpackages, bottom first; the commands at pipeline/'s top are above all of them
# but the tools. Each may import those before it (and data_prep), never those after it.
LAYERS = (
    "pipeline.config",
    "pipeline.distributed",
    "pipeline.data",
    "pipeline.model",
    "pipeline.checkpoint",
    "pipeline.publish",
    "pipeline.evaluation",
    "pipeline.cache_teacher",
    "pipeline.run",
    "pipeline",  # the commands: train, export, evaluate
    "pipeline.tools",
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] in PACKAGES}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imported_modules(path: Path) -> set[str]:
    """Our modules that ``path`` imports (a name imported from a package may be a module)."""
    return {n for n in _imports(path) if n in MODULES}


def _is_command(name: str, path: Path) -> bool:
    return name.endswith(".__main__") or 'if __name__ == "__main__"' in path.read_text()


def _is_tool(name: str) -> bool:
    return ".tools" in f".{name}" and name.split(".")[1:2] == ["tools"]


def _layer(name: str) -> str:
    """The LAYERS entry a pipeline module belongs to (its subpackage, or pipeline's top)."""
    parts = name.split(".")
    return (
        ".".join(parts[:2]) if len(parts) > 2 or f"{parts[0]}.{parts[-1]}" in LAYERS else "pipeline"
    )


def test_data_prep_never_imports_pipeline() -> None:
    offenders = {
        name: sorted(n for n in _imports(path) if n.split(".")[0] == "pipeline")
        for name, path in MODULES.items()
        if name.startswith("data_prep")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_nothing_below_the_tools_imports_them() -> None:
    offenders = {}
    for name, path in MODULES.items():
        if _is_tool(name):
            continue
        bad = sorted(n for n in _imported_modules(path) if _is_tool(n))
        if bad:
            offenders[name] = bad
    assert not offenders


def test_commands_are_leaves() -> None:
    commands = {name for name, path in MODULES.items() if _is_command(name, path)}
    assert {"pipeline.train", "pipeline.export", "pipeline.evaluate"} <= commands
    assert {"data_prep.build_shards", "pipeline.cache_teacher.__main__"} <= commands
    offenders = {}
    for name, path in MODULES.items():
        if _is_tool(name):
            continue
        bad = sorted(_imported_modules(path) & commands - {name})
        if bad:
            offenders[name] = bad
    assert not offenders


def test_pipeline_subpackages_import_only_downwards() -> None:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    offenders = []
    for name, path in MODULES.items():
        if not name.startswith("pipeline"):
            continue
        here = _layer(name)
        assert here in rank, f"{name}: a subpackage the layering does not know; add it to LAYERS"
        for target in _imported_modules(path):
            if target.startswith("pipeline") and rank[_layer(target)] > rank[here]:
                offenders.append(f"{name} -> {target}")
    assert not offenders


def test_no_import_cycle() -> None:
    graph = {name: _imported_modules(path) - {name} for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles


def test_the_checks_see_imports() -> None:  # the tests above would pass on an empty parse
    assert "pipeline.config.schema" in _imported_modules(MODULES["pipeline.run.plan"])
    assert "data_prep.errors" in _imported_modules(MODULES["data_prep.indexed"])
    assert _layer("pipeline.run.plan") == "pipeline.run"
    assert _layer("pipeline.train") == "pipeline"
    assert _layer("pipeline.cache_teacher") == "pipeline.cache_teacher"
    assert _is_command("pipeline.train", MODULES["pipeline.train"])
    assert not _is_command("pipeline.run.trainer", MODULES["pipeline.run.trainer"])
