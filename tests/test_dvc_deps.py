"""dvc.yaml re-runs a stage when code it runs changes: each stage's `deps` cover the import closure
of its command, and the library's imports run from later phases to earlier ones, never back."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

# The pipeline's phases in order; top-level modules of segpipe are shared infrastructure.
PHASES = ("prep", "data", "models", "training", "inference", "evaluation", "experiments", "serving")


def module_file(name: str) -> Path | None:
    """The repo file of an importable module name (segpipe.* under src/, pipeline.* at the root)."""
    parts = name.split(".")
    root = REPO / "src" if parts[0] == "segpipe" else REPO if parts[0] == "pipeline" else None
    if root is None:
        return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement anywhere in the file names (function-level imports too),
    including `from package import module` forms and the packages on the way."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    packages = {".".join(name.split(".")[:i]) for name in names for i in range(1, name.count(".") + 1)}
    return names | packages


def closure(start: Path) -> set[Path]:
    """The repo files that running `start` can execute, by following imports transitively."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [f for f in map(module_file, imported_modules(path)) if f is not None]
    return seen


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_command_file(stage: dict) -> Path:
    words = stage["cmd"].split()
    assert words[:3] == ["python", "-m", "pipeline"], stage["cmd"]
    return REPO / "pipeline" / f"{words[3]}.py"


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_file_a_stage_runs_is_among_its_deps(name):
    stage = stages()[name]
    deps = [REPO / d for d in stage["deps"]]
    code = closure(stage_command_file(stage))
    uncovered = sorted(
        str(f.relative_to(REPO)) for f in code if not any(f == d or d in f.parents for d in deps)
    )
    assert not uncovered, f"stage {name} runs these files but does not depend on them: {uncovered}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_a_stage_depends_on_no_code_it_does_not_run(name):
    stage = stages()[name]
    code = closure(stage_command_file(stage))
    for dep in stage["deps"]:
        path = REPO / dep
        if path.suffix == ".py" or (path.is_dir() and any(path.rglob("*.py"))):
            assert any(f == path or path in f.parents for f in code), f"stage {name}: {dep} is code it never runs"


def test_closure_follows_function_level_imports():
    # The stage commands import the library inside main(), to start fast; those imports count.
    files = closure(REPO / "pipeline" / "train.py")
    assert REPO / "src" / "segpipe" / "training" / "loop.py" in files


def phase_of(path: Path) -> int | None:
    relative = path.relative_to(REPO / "src" / "segpipe")
    return PHASES.index(relative.parts[0]) if len(relative.parts) > 1 else None


def test_no_module_imports_from_a_later_phase_and_shared_modules_import_no_phase():
    library = REPO / "src" / "segpipe"
    wrong = []
    for path in sorted(library.rglob("*.py")):
        mine = phase_of(path)
        for name in imported_modules(path):
            target = module_file(name)
            if target is None or not target.is_relative_to(library):
                continue
            theirs = phase_of(target)
            if theirs is not None and (mine is None or theirs > mine):
                wrong.append(f"{path.relative_to(library)} imports {name}")
    assert not wrong, "imports that point from an earlier phase (or shared code) to a later one:\n" + "\n".join(wrong)


def test_the_convert_stage_reads_its_input_folder_from_data_raw(tmp_path: Path, monkeypatch):
    """`dvc exp run -S data.raw=...` (which edits params.yaml) points convert at other data:
    DVC resolves `${data.raw}` in the command and the deps from params.yaml."""
    from dvc.repo import Repo

    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["data"]["raw"] == "data/sample"  # the bundled sample by default
    params["data"]["raw"] = "data/mine"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    Repo.init(no_scm=True)
    convert = Repo(".").stage.collect("convert")[0]
    assert convert.cmd.startswith("python -m pipeline convert data/mine data/processed")
    assert "data/mine" in [str(dep.def_path) for dep in convert.deps]
