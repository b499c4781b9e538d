"""pyproject.toml names every distribution the code imports, so `pip install .` alone gives a
working `segpipe` (the slow install test in tests/cli/test_install.py runs it for real)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.helpers import REPO

# Needed at run time although no module imports it by name.
RUNTIME_ONLY = {"python-multipart": "FastAPI reads form uploads (the page, POST /predict) with it"}


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {normalised(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0]) for dep in dependencies}


def imported_top_level() -> set[str]:
    """Top-level names imported anywhere in src/ and pipeline/, function-level imports included."""
    names: set[str] = set()
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "pipeline").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("segpipe", "pipeline")}


def test_every_imported_distribution_is_declared_in_pyproject():
    by_module = importlib.metadata.packages_distributions()
    wanted = declared()
    missing = {
        module: by_module.get(module, ["(not installed)"])
        for module in imported_top_level()
        if not wanted & {normalised(dist) for dist in by_module.get(module, [])}
    }
    assert missing == {}, f"add these to pyproject.toml's dependencies: {missing}"
    assert set(RUNTIME_ONLY) <= wanted
