"""The package layout keeps its promises: small modules and functions, analysis code out of
the library, and a README layout section that names every module."""

from __future__ import annotations

import ast
import re

from conftest import REPO

SRC = REPO / "src" / "lmx"
MODULES = sorted(SRC.rglob("*.py"))


def test_no_module_over_300_lines_and_no_function_or_class_over_150():
    too_long = []
    for path in MODULES:
        text = path.read_text()
        if text.count("\n") > 300:
            too_long.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 150:
                    too_long.append(f"{path.relative_to(SRC)}: {node.name} has {lines} lines")
    assert too_long == []


def test_no_library_module_imports_the_bench():
    importers = []
    for path in MODULES:
        if path.is_relative_to(SRC / "bench"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "lmx.bench" or n.startswith("lmx.bench.") for n in names):
                importers.append(str(path.relative_to(SRC)))
    assert importers == []


def test_the_readme_layout_names_every_module():
    readme = (REPO / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"[a-z_]+\.py", layout))
    missing = [
        str(p.relative_to(SRC))
        for p in MODULES
        if p.name not in ("__init__.py", "__main__.py") and p.name not in named
    ]
    assert missing == []
    for folder in {p.parent for p in MODULES if p.parent != SRC}:
        assert f"{folder.name}/" in layout, folder.name
        assert (folder / "__init__.py").read_text().startswith('"""'), folder.name
