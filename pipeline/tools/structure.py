"""The shape of the code, measured: modules per folder, imports between subpackages, the longest
functions, and the manifest read as a dict.

    python -m pipeline.tools.structure [--top N]

Reads the source with ``ast`` (nothing is imported). A subpackage is a folder of ``pipeline/`` or
``data_prep/``; an arrow A -> B counts the modules of A that import something of B. The layering
test (tests/test_layering.py) asserts what this prints.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("data_prep", "pipeline")
MANIFEST_DICT = re.compile(r"\b\w*manifest\w*(\[[\"']|\.get\()")


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_of(path: Path) -> str:
    """The subpackage a module belongs to (its folder, dotted)."""
    return ".".join(path.relative_to(REPO).parent.parts)


def imported_modules(path: Path) -> set[str]:
    """Every module name imported by ``path`` (absolute imports of our packages only, with the
    imported names as ``module.name`` too, since ``from pkg import mod`` imports a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in out if n.split(".")[0] in PACKAGES}


def package_graph() -> dict[tuple[str, str], int]:
    """(importing subpackage, imported subpackage) -> number of importing modules."""
    known = {module_name(p): package_of(p) for p in modules()}
    known.update({".".join(p.relative_to(REPO).parent.parts): package_of(p) for p in modules()})
    edges: Counter[tuple[str, str]] = Counter()
    for path in modules():
        src = package_of(path)
        targets = {known[n] for n in imported_modules(path) if n in known} - {src}
        for dst in targets:
            edges[src, dst] += 1
    return dict(edges)


def function_lengths() -> list[tuple[int, str]]:
    out = []
    for path in modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                out.append((length, f"{module_name(path)}:{node.name}"))
    return sorted(out, reverse=True)


def manifest_dict_reads() -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in modules():
        n = len(MANIFEST_DICT.findall(path.read_text()))
        if n:
            counts[module_name(path)] = n
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline.tools.structure", description=__doc__)
    p.add_argument("--top", type=int, default=8, help="longest functions shown")
    args = p.parse_args(argv)
    per_folder: defaultdict[str, int] = defaultdict(int)
    for path in modules():
        per_folder[package_of(path)] += 1
    print("modules per folder:")
    for folder, n in sorted(per_folder.items()):
        print(f"  {folder + '/':28} {n}")
    print("imports between subpackages (importing modules):")
    for (src, dst), n in sorted(package_graph().items()):
        print(f"  {src} -> {dst}: {n}")
    print(f"longest functions (top {args.top}):")
    for length, name in function_lengths()[: args.top]:
        print(f"  {length:4} {name}")
    reads = manifest_dict_reads()
    print(f"manifest read as a dict: {sum(reads.values())} in {len(reads)} modules")
    for name, n in sorted(reads.items()):
        print(f"  {name}: {n}")


if __name__ == "__main__":
    main()
