"""The layers go one way: data_prep is the base and never imports pipeline; nothing in pipeline or
data_prep imports the tools (demo, benchmarks) that sit on top of both."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_data_prep_never_imports_pipeline() -> None:
    offenders = {
        str(p.relative_to(REPO)): sorted(n for n in _imports(p) if n.split(".")[0] == "pipeline")
        for p in _modules("data_prep")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_nothing_below_the_tools_imports_them() -> None:
    offenders = {}
    for p in _modules("pipeline") + _modules("data_prep"):
        if "tools" in p.relative_to(REPO).parts:
            continue
        bad = sorted(n for n in _imports(p) if n.startswith("pipeline.tools"))
        if bad:
            offenders[str(p.relative_to(REPO))] = bad
    assert not offenders


def test_the_check_sees_imports() -> None:  # the two tests above would pass on an empty parse
    assert "pipeline.config" in _imports(REPO / "pipeline" / "plan.py")
    assert "data_prep.errors" in _imports(REPO / "data_prep" / "indexed.py")
