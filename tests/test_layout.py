"""The package layout as the architecture: the import contracts (import-linter, declared in pyproject.toml)
hold, breaking one is caught, modules stay small, and the top level holds only the edge and the shared
vocabulary."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
#: The edge (errors, __main__; cli is a package) and the shared leaf modules every layer reads: the Image API's
#: vocabulary (models), the outcomes and states (outcomes), sizes and durations (units), the atomic write (files),
#: work done in slices (slices).
TOP_LEVEL = {"__init__.py", "__main__.py", "errors.py", "models.py", "outcomes.py", "units.py", "files.py",
             "slices.py"}  # fmt: skip
LAYERS = {"cli", "config", "cloud", "plan", "state", "transfer", "run", "report", "emulator"}


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy under test, not the installed package
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


def test_import_contracts_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def test_breaking_a_layer_is_caught(tmp_path: Path) -> None:
    """A scratch module in ``plan`` that imports ``cloud`` breaks the layers and the no-I/O contract."""
    shutil.copytree(PACKAGE, tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "pipeline" / "plan" / "scratch.py").write_text("import pipeline.cloud\n")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 kept, 2 broken" in result.stdout
    assert "pipeline.plan is not allowed to import pipeline.cloud" in result.stdout


def test_an_import_cycle_is_caught_also_under_type_checking(tmp_path: Path) -> None:
    """A scratch module in ``run`` that imports ``runner`` only for the type checker, imported by ``images`` (which
    ``runner`` imports): a cycle of three modules. The acyclic contract breaks and names the package and an import
    that would break the cycle; the other contracts still hold."""
    shutil.copytree(PACKAGE, tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    run = tmp_path / "pipeline" / "run"
    (run / "scratch.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                                    "    import pipeline.run.runner\n")  # fmt: skip
    with (run / "images.py").open("a") as fh:
        fh.write("\nfrom pipeline.run import scratch  # noqa: E402\n")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "4 kept, 1 broken" in result.stdout
    assert "No cycles are allowed in pipeline.run." in result.stdout


def test_top_level_and_subpackages() -> None:
    modules = {p.name for p in PACKAGE.glob("*.py")}
    assert modules == TOP_LEVEL
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert packages == LAYERS
    for name in LAYERS:
        doc = (PACKAGE / name / "__init__.py").read_text()
        assert doc.startswith('"""'), f"{name}/__init__.py has a docstring"
        assert "import" in doc.split('"""')[1], f"{name}/__init__.py says what it may import"


def test_modules_stay_small() -> None:
    """No module past about 500 lines: a unit follows what it owns, and is split where its design splits."""
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > 500
    }
    assert not too_long
