"""The three layers depend one way: models <- inspector <- ui (STYLE.md section 1)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "models": {"inspector", "ui", "PySide6", "pyqtgraph", "sqlalchemy"},
    "inspector": {"ui", "PySide6", "pyqtgraph"},
    "ui": {"torch", "timm", "onnxruntime", "anomalib", "models"},
}


def top_level_imports(path: Path) -> set[str]:
    """Top-level package names imported anywhere in a module (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layer_imports(package: str) -> None:
    for path in sorted((REPO / package).rglob("*.py")):
        bad = top_level_imports(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_engine_import_pulls_no_qt() -> None:
    code = (
        "import sys, inspector, inspector.cli, inspector.pipeline, inspector.store, inspector.recipe;"
        "bad = sorted(m for m in ('PySide6', 'pyqtgraph') if m in sys.modules); print(bad); sys.exit(bool(bad))"
    )
    run = _fresh_interpreter(code)
    assert run.returncode == 0, run.stdout + run.stderr


def test_cli_help_does_not_import_torch() -> None:
    run = _without_torch("from inspector.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert run.returncode == 0, "inspector --help imported torch\n" + run.stderr


def test_reading_a_recipe_does_not_import_torch() -> None:
    # the app reads recipe files on its GUI thread (Review's defect classes) and the CLI before it needs a model:
    # importing torch costs 1-5 s there
    run = _without_torch("from inspector.recipe import load_recipe\nload_recipe('recipes/fryum_demo.yaml')")
    assert run.returncode == 0, "reading a recipe imported torch\n" + run.stderr


def test_reading_a_saved_models_thresholds_and_teaching_scores_does_not_import_torch(taught_recipe: Path) -> None:
    # the Statistics screen reads them on a worker thread as the app starts: importing torch there held the
    # interpreter lock in pieces of up to 0.3 s and stalled the screen (models.manifest)
    run = _without_torch(
        "from inspector.recipe import load_recipe\n"
        "from inspector.station import line_thresholds\n"
        "from inspector.statistics import location_caveat, teaching_scores\n"
        "from inspector.versions import resolve_version\n"
        f"recipe = load_recipe({str(taught_recipe)!r})\n"
        "folder = resolve_version(recipe).path\n"
        "print(line_thresholds(recipe, folder), teaching_scores(folder)[1:], location_caveat(folder))")
    assert run.returncode == 0, "reading a saved model's numbers imported torch\n" + run.stdout + run.stderr
    review, fail, _ = (float(x) for x in run.stdout.split(")")[0].strip("(").split(","))
    assert 0 < review <= fail


def _fresh_interpreter(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by a new Python in the repository root (nothing imported before it)."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def _without_torch(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by a new Python, which then exits 1 if torch was imported on the way."""
    return _fresh_interpreter(code + "\nimport sys\nsys.exit('torch' in sys.modules)")
